//! A pool of Lua states, each with the policy loaded, so that handlers run
//! concurrently: one slow handler holds one state, not the policy.

use crate::declarations::InitConfig;
use crate::definition::{from_return, Definition};
use crate::error::{lua_message, quote_args, PolicyError};
use crate::kumo::{install, HANDLERS};
use mlua::{Function, Lua, Table, Value};
use std::sync::{Arc, Mutex};
use tokio::sync::Semaphore;

/// The policy as loaded into `size` states. Immutable once built: a reload builds a
/// new one, and calls already running finish on the old.
pub(crate) struct LuaStates {
    idle: Mutex<Vec<Lua>>,
    permits: Semaphore,
    /// What the policy declared (from the first state's `init`).
    pub(crate) init: InitConfig,
    /// Which load of the policy this is (0 first, +1 per reload).
    pub(crate) generation: u64,
}

impl LuaStates {
    /// Loads `code` (named `chunk_name` in messages) into `size` fresh states and
    /// runs the `init` event once, in the first.
    pub(crate) fn load(
        code: &str,
        chunk_name: &str,
        size: usize,
        generation: u64,
    ) -> Result<Arc<LuaStates>, PolicyError> {
        let size = size.max(1);
        let mut states = Vec::with_capacity(size);
        let mut init = InitConfig::default();
        for i in 0..size {
            let lua = Lua::new();
            let load_error = |e: mlua::Error| PolicyError::Load {
                path: chunk_name.to_owned(),
                message: lua_message(&e),
            };
            install(&lua).map_err(load_error)?;
            lua.load(code)
                .set_name(format!("@{chunk_name}"))
                .exec()
                .map_err(load_error)?;
            if i == 0 {
                if let Some(handler) = handler(&lua, crate::events::INIT).map_err(load_error)? {
                    handler.call::<()>(()).map_err(|e| PolicyError::Runtime {
                        event: "init",
                        args: String::new(),
                        message: lua_message(&e),
                    })?;
                }
                init = lua
                    .app_data_ref::<InitConfig>()
                    .map(|i| i.clone())
                    .unwrap_or_default();
            }
            states.push(lua);
        }
        Ok(Arc::new(LuaStates {
            idle: Mutex::new(states),
            permits: Semaphore::new(size),
            init,
            generation,
        }))
    }

    /// Calls `event` with `args` on an idle state (waiting for one if all are busy),
    /// on a blocking thread so a slow handler never stalls the async runtime.
    /// `Ok(None)` means the policy has no handler for the event.
    pub(crate) async fn call<T: Definition>(
        self: &Arc<Self>,
        event: &'static str,
        args: Vec<Option<String>>,
    ) -> Result<Option<T>, PolicyError> {
        let permit = self
            .permits
            .acquire()
            .await
            .map_err(|e| PolicyError::Internal(e.to_string()))?;
        let lua = self
            .idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop()
            .ok_or_else(|| PolicyError::Internal("no idle Lua state despite a permit".into()))?;
        let joined = tokio::task::spawn_blocking(move || {
            let result = call_on::<T>(&lua, event, &args);
            (lua, result)
        })
        .await;
        match joined {
            Ok((lua, result)) => {
                self.idle
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(lua);
                drop(permit);
                result
            }
            Err(e) => {
                // The state died with its thread; shrink the pool rather than hand out
                // a permit with no state behind it.
                permit.forget();
                Err(PolicyError::Internal(format!(
                    "{event} handler thread failed: {e}"
                )))
            }
        }
    }
}

fn handler(lua: &Lua, event: &str) -> mlua::Result<Option<Function>> {
    let handlers: Table = lua.named_registry_value(HANDLERS)?;
    handlers.get(event)
}

fn call_on<T: Definition>(
    lua: &Lua,
    event: &'static str,
    args: &[Option<String>],
) -> Result<Option<T>, PolicyError> {
    let borrowed: Vec<Option<&str>> = args.iter().map(|a| a.as_deref()).collect();
    let internal = |e: mlua::Error| PolicyError::Internal(e.to_string());
    let Some(function) = handler(lua, event).map_err(internal)? else {
        return Ok(None);
    };
    let mut lua_args = mlua::MultiValue::new();
    for arg in args {
        lua_args.push_back(match arg {
            Some(s) => Value::String(lua.create_string(s).map_err(internal)?),
            None => Value::Nil,
        });
    }
    let value: Value = function.call(lua_args).map_err(|e| PolicyError::Runtime {
        event,
        args: quote_args(&borrowed),
        message: lua_message(&e),
    })?;
    from_return::<T>(lua, event, &borrowed, value).map(Some)
}
