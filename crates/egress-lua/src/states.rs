//! A pool of Lua states, each with the policy loaded, so that handlers run
//! concurrently: one slow handler holds one state, not the policy.
//!
//! Every call runs under the policy time limit. A Lua hook, run every
//! [`HOOK_EVERY`] VM instructions, raises an error once the call's deadline has
//! passed, so a looping handler is interrupted inside Lua (no thread is killed) and
//! its state goes back to the pool. The caller never waits longer than the limit
//! plus [`CALLER_GRACE`]: a handler stuck inside one long C call is left to finish
//! on its blocking thread, which returns the state itself.

use crate::declarations::InitConfig;
use crate::definition::{from_return, Definition};
use crate::error::{lua_message, quote_args, PolicyError};
use crate::kumo::{install, HANDLERS};
use mlua::{Function, HookTriggers, Lua, Table, Value, VmState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// VM instructions between two deadline checks: frequent enough to stop a loop
/// within a millisecond or so, rare enough to cost nothing measurable.
const HOOK_EVERY: u32 = 10_000;
/// How much longer than the limit a caller waits before giving up on a handler
/// that is stuck where the hook cannot reach (inside a C function).
const CALLER_GRACE: Duration = Duration::from_millis(250);

/// One Lua state and the deadline its hook checks (nanoseconds since [`epoch`];
/// 0 = no call running).
struct State {
    lua: Lua,
    deadline: Arc<AtomicU64>,
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn nanos_since_epoch(at: Instant) -> u64 {
    at.saturating_duration_since(epoch()).as_nanos() as u64
}

impl State {
    fn new(time_limit: Duration) -> State {
        let lua = Lua::new();
        let deadline = Arc::new(AtomicU64::new(0));
        let seen = deadline.clone();
        lua.set_hook(
            HookTriggers::new().every_nth_instruction(HOOK_EVERY),
            move |_, _| {
                let at = seen.load(Ordering::Relaxed);
                if at != 0 && nanos_since_epoch(Instant::now()) > at {
                    return Err(mlua::Error::runtime(format!(
                        "interrupted: the policy time limit ({}) passed",
                        humantime::format_duration(time_limit)
                    )));
                }
                Ok(VmState::Continue)
            },
        );
        State { lua, deadline }
    }

    /// Runs `f` with the deadline armed; says whether the deadline passed.
    fn bounded<R>(&self, limit: Duration, f: impl FnOnce(&Lua) -> R) -> (R, bool) {
        let deadline = nanos_since_epoch(Instant::now() + limit).max(1);
        self.deadline.store(deadline, Ordering::Relaxed);
        let result = f(&self.lua);
        self.deadline.store(0, Ordering::Relaxed);
        (result, nanos_since_epoch(Instant::now()) > deadline)
    }
}

/// The policy as loaded into `size` states. Immutable once built: a reload builds a
/// new one, and calls already running finish on the old.
pub(crate) struct LuaStates {
    idle: Mutex<Vec<State>>,
    permits: Arc<Semaphore>,
    time_limit: Duration,
    observer: Option<crate::HandlerObserver>,
    /// What the policy declared (from the first state's `init`).
    pub(crate) init: InitConfig,
    /// Which load of the policy this is (0 first, +1 per reload).
    pub(crate) generation: u64,
}

impl LuaStates {
    /// Loads `code` (named `chunk_name` in messages) into `size` fresh states and
    /// runs the `init` event once, in the first; each step under `time_limit`.
    pub(crate) fn load(
        code: &str,
        chunk_name: &str,
        size: usize,
        generation: u64,
        time_limit: Duration,
        observer: Option<crate::HandlerObserver>,
    ) -> Result<Arc<LuaStates>, PolicyError> {
        let size = size.max(1);
        let memo = std::sync::Arc::new(crate::utility::Memo::default());
        let mut states = Vec::with_capacity(size);
        let mut init = InitConfig::default();
        for i in 0..size {
            let state = State::new(time_limit);
            let load_error = |e: mlua::Error| PolicyError::Load {
                path: chunk_name.to_owned(),
                message: lua_message(&e),
            };
            install(&state.lua, memo.clone()).map_err(load_error)?;
            crate::proxy::install(&state.lua).map_err(load_error)?;
            let (loaded, _) = state.bounded(time_limit, |lua| {
                lua.load(code).set_name(format!("@{chunk_name}")).exec()
            });
            loaded.map_err(load_error)?;
            if i == 0 {
                let pre_init: mlua::Table = state
                    .lua
                    .named_registry_value(crate::kumo::PRE_INIT)
                    .map_err(load_error)?;
                for handler in pre_init.sequence_values::<mlua::Function>() {
                    let handler = handler.map_err(load_error)?;
                    let (ran, late) = state.bounded(time_limit, |_| handler.call::<()>(()));
                    ran.map_err(|e| match late {
                        true => time_limit_error("pre_init", String::new(), time_limit),
                        false => PolicyError::Runtime {
                            event: "pre_init",
                            args: String::new(),
                            message: lua_message(&e),
                        },
                    })?;
                }
                // `proxy_init` is KumoProxy's `init`: egress-proxy's declarations.
                for event in [crate::events::INIT, crate::events::PROXY_INIT] {
                    let Some(handler) = handler(&state.lua, event).map_err(load_error)? else {
                        continue;
                    };
                    let (ran, late) = state.bounded(time_limit, |_| handler.call::<()>(()));
                    ran.map_err(|e| match late {
                        true => time_limit_error(event, String::new(), time_limit),
                        false => PolicyError::Runtime {
                            event,
                            args: String::new(),
                            message: lua_message(&e),
                        },
                    })?;
                }
                init = state
                    .lua
                    .app_data_ref::<InitConfig>()
                    .map(|i| i.clone())
                    .unwrap_or_default();
            } else if let Some(resolver) = &init.resolver {
                // `init` runs in the first state only, but every state's
                // `kumo.dns.lookup_*` must use the resolver it configured (KumoMTA's
                // docs say to call configure_resolver there).
                if let Some(mut own) = state.lua.app_data_mut::<InitConfig>() {
                    own.resolver.get_or_insert_with(|| resolver.clone());
                }
            }
            states.push(state);
        }
        Ok(Arc::new(LuaStates {
            idle: Mutex::new(states),
            permits: Arc::new(Semaphore::new(size)),
            time_limit,
            observer,
            init,
            generation,
        }))
    }

    /// Calls `event` with `args` on an idle state (waiting for one if all are busy),
    /// on a blocking thread so a slow handler never stalls the async runtime.
    /// `Ok(None)` means the policy has no handler for the event. Waiting for a
    /// state and running the handler together take at most the time limit (plus a
    /// small grace).
    pub(crate) async fn call<T: Definition + Send + 'static>(
        self: &Arc<Self>,
        event: &'static str,
        args: Vec<Option<String>>,
    ) -> Result<Option<T>, PolicyError> {
        let args = args.into_iter().map(Arg::Str).collect();
        self.invoke(event, args, |lua, event, shown, value| {
            let borrowed: Vec<Option<&str>> = shown.iter().map(|a| a.as_deref()).collect();
            from_return::<T>(lua, event, &borrowed, value)
        })
        .await
    }

    /// No `kumo.validation_failed()` at the top level of any state (for a policy
    /// with no `validate_config` handler).
    pub(crate) fn top_level_passed(&self) -> bool {
        let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        !idle.iter().any(|state| {
            state
                .lua
                .app_data_ref::<crate::utility::ValidationFailed>()
                .is_some_and(|f| f.0)
        })
    }

    /// True when the policy has a handler for `event`.
    pub(crate) fn has_handler(&self, event: &str) -> bool {
        let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.first()
            .is_some_and(|state| matches!(handler(&state.lua, event), Ok(Some(_))))
            // Every state holds the same policy; if all are busy, assume it does.
            || idle.is_empty()
    }

    /// The general form of [`call`](Self::call): any arguments, and `convert` turns
    /// the handler's return value into the result.
    pub(crate) async fn invoke<R: Send + 'static>(
        self: &Arc<Self>,
        event: &'static str,
        args: Vec<Arg>,
        convert: Convert<R>,
    ) -> Result<Option<R>, PolicyError> {
        let Some(observer) = &self.observer else {
            return self.invoke_unobserved(event, args, convert).await;
        };
        let started = Instant::now();
        let result = self.invoke_unobserved(event, args, convert).await;
        // A missing handler is no call: nothing to time.
        if !matches!(result, Ok(None)) {
            observer(event, started.elapsed(), result.is_ok());
        }
        result
    }

    async fn invoke_unobserved<R: Send + 'static>(
        self: &Arc<Self>,
        event: &'static str,
        args: Vec<Arg>,
        convert: Convert<R>,
    ) -> Result<Option<R>, PolicyError> {
        let limit = self.time_limit;
        let shown: Vec<Option<String>> = args.iter().map(Arg::shown).collect();
        let quoted = || {
            let borrowed: Vec<Option<&str>> = shown.iter().map(|a| a.as_deref()).collect();
            quote_args(&borrowed)
        };
        let give_up = tokio::time::Instant::now() + limit + CALLER_GRACE;
        let permit =
            match tokio::time::timeout_at(give_up, self.permits.clone().acquire_owned()).await {
                Ok(Ok(permit)) => permit,
                Ok(Err(e)) => return Err(PolicyError::Internal(e.to_string())),
                Err(_) => return Err(time_limit_error(event, quoted(), limit)),
            };
        let Some(state) = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop() else {
            return Err(PolicyError::Internal(
                "no idle Lua state despite a permit".into(),
            ));
        };
        let states = self.clone();
        let job_shown = shown.clone();
        // The blocking thread gives the state and the permit back itself, so a
        // caller that stops waiting loses nothing.
        let job = tokio::task::spawn_blocking(move || {
            let (result, late) =
                state.bounded(limit, |lua| call_on(lua, event, &args, &job_shown, convert));
            states
                .idle
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(state);
            drop(permit);
            match result {
                Err(PolicyError::Runtime { event, args, .. }) if late => {
                    Err(time_limit_error(event, args, limit))
                }
                other => other,
            }
        });
        match tokio::time::timeout_at(give_up, job).await {
            Ok(Ok(result)) => result,
            Ok(Err(e)) => {
                // The state died with its thread: the permit went with it, so the pool
                // shrinks rather than hands out a permit with no state behind it.
                Err(PolicyError::Internal(format!(
                    "{event} handler thread failed: {e}"
                )))
            }
            Err(_) => Err(time_limit_error(event, quoted(), limit)),
        }
    }
}

/// Turns a handler's return value (with the event and its arguments as shown in
/// messages) into a result.
pub(crate) type Convert<R> =
    fn(&Lua, &'static str, &[Option<String>], Value) -> Result<R, PolicyError>;

/// An argument to a handler.
#[derive(Debug, Clone)]
pub(crate) enum Arg {
    /// A string, or nil.
    Str(Option<String>),
    /// A string never shown in messages (a password).
    Secret(String),
    /// A table of string fields.
    Table(Vec<(String, String)>),
    /// A message, as KumoMTA's `Message` object (`get_meta`, `set_meta`,
    /// `sender`, `recipient`, `id`, `get_data`).
    Message(Box<MessageArg>),
    /// A message in flight that the handler may change (read back after the
    /// call).
    InFlight(crate::message::Shared),
}

/// What a message argument holds.
#[derive(Debug, Clone)]
pub(crate) struct MessageArg {
    pub id: String,
    pub sender: String,
    pub recipient: String,
    pub meta: serde_json::Map<String, serde_json::Value>,
    pub data: String,
}

impl Arg {
    /// A connection's metadata (`conn_meta`), as KumoMTA's handlers get it.
    pub(crate) fn conn_meta(fields: &[(&str, String)]) -> Arg {
        Arg::Table(
            fields
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect(),
        )
    }

    /// How the argument appears in error messages.
    fn shown(&self) -> Option<String> {
        match self {
            Arg::Str(s) => s.clone(),
            Arg::Secret(_) => Some("(hidden)".into()),
            Arg::Table(_) => Some("{...}".into()),
            Arg::Message(m) => Some(format!("message {}", m.id)),
            Arg::InFlight(_) => Some("msg".into()),
        }
    }

    fn to_lua(&self, lua: &Lua) -> mlua::Result<Value> {
        Ok(match self {
            Arg::Message(m) => message_to_lua(lua, m)?,
            Arg::InFlight(shared) => Value::UserData(lua.create_userdata(shared.clone())?),
            Arg::Str(Some(s)) | Arg::Secret(s) => Value::String(lua.create_string(s)?),
            Arg::Str(None) => Value::Nil,
            Arg::Table(fields) => {
                let t = lua.create_table()?;
                for (k, v) in fields {
                    t.set(k.as_str(), v.as_str())?;
                }
                // KumoMTA's connection metadata is an object: `conn_meta:get_meta(name)`
                // (what its policy-extras call) reads the same fields.
                let methods = lua.create_table()?;
                methods.set(
                    "get_meta",
                    lua.create_function(|_, (this, name): (mlua::Table, String)| {
                        this.raw_get::<Value>(name)
                    })?,
                )?;
                let meta = lua.create_table()?;
                meta.set("__index", methods)?;
                t.set_metatable(Some(meta));
                Value::Table(t)
            }
        })
    }
}

/// A message object: fields in a table, KumoMTA's methods in its metatable.
fn message_to_lua(lua: &Lua, m: &MessageArg) -> mlua::Result<Value> {
    use mlua::LuaSerdeExt;
    let t = lua.create_table()?;
    let meta = lua.create_table()?;
    for (k, v) in &m.meta {
        meta.set(k.as_str(), lua.to_value(v)?)?;
    }
    t.set("_meta", meta)?;
    t.set("_id", m.id.as_str())?;
    t.set("_sender", m.sender.as_str())?;
    t.set("_recipient", m.recipient.as_str())?;
    t.set("_data", m.data.as_str())?;
    let methods = lua.create_table()?;
    methods.set(
        "get_meta",
        lua.create_function(|_, (this, name): (mlua::Table, String)| {
            this.get::<mlua::Table>("_meta")?.get::<Value>(name)
        })?,
    )?;
    methods.set(
        "set_meta",
        lua.create_function(|_, (this, name, value): (mlua::Table, String, Value)| {
            this.get::<mlua::Table>("_meta")?.set(name, value)
        })?,
    )?;
    for (method, field) in [
        ("id", "_id"),
        ("sender", "_sender"),
        ("recipient", "_recipient"),
        ("get_data", "_data"),
    ] {
        methods.set(
            method,
            lua.create_function(move |_, this: mlua::Table| this.get::<Value>(field))?,
        )?;
    }
    let mt = lua.create_table()?;
    mt.set("__index", methods)?;
    t.set_metatable(Some(mt));
    Ok(Value::Table(t))
}

fn time_limit_error(event: &'static str, args: String, limit: Duration) -> PolicyError {
    PolicyError::TimeLimit {
        event,
        args,
        limit,
        limit_text: humantime::format_duration(limit).to_string(),
    }
}

fn handler(lua: &Lua, event: &str) -> mlua::Result<Option<Function>> {
    let handlers: Table = lua.named_registry_value(HANDLERS)?;
    handlers.get(event)
}

fn call_on<R>(
    lua: &Lua,
    event: &'static str,
    args: &[Arg],
    shown: &[Option<String>],
    convert: Convert<R>,
) -> Result<Option<R>, PolicyError> {
    let internal = |e: mlua::Error| PolicyError::Internal(e.to_string());
    let Some(function) = handler(lua, event).map_err(internal)? else {
        return Ok(None);
    };
    let mut lua_args = mlua::MultiValue::new();
    for arg in args {
        lua_args.push_back(arg.to_lua(lua).map_err(internal)?);
    }
    let value: Value = function.call(lua_args).map_err(|e| {
        if let Some(rejection) = crate::error::rejection_in(&e) {
            return PolicyError::Rejected { event, rejection };
        }
        let borrowed: Vec<Option<&str>> = shown.iter().map(|a| a.as_deref()).collect();
        PolicyError::Runtime {
            event,
            args: quote_args(&borrowed),
            message: lua_message(&e),
        }
    })?;
    convert(lua, event, shown, value).map(Some)
}
