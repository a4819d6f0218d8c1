//! The `kumo` module: the functions a KumoMTA policy calls, with KumoMTA's names and
//! argument orders, so egress policies written for KumoMTA run here unchanged.

use crate::declarations::{
    declare, EsmtpListener, HttpListener, InitConfig, RedisThrottles, SpoolDefinition,
};
use crate::definition::{Definition, Made};
use crate::error::{from_lua, located};
use egress_dns::ResolverConfig;
use egress_source::{EgressPathConfig, EgressPool, EgressSource, QueueConfig};
use mlua::{Function, Lua, Table, Value, Variadic};

/// Registry key of the table of event handlers registered with `kumo.on`.
pub(crate) const HANDLERS: &str = "egress.handlers";

/// Registry key of the list of `pre_init` handlers (the one event that may be
/// registered many times: helper modules each add theirs).
pub(crate) const PRE_INIT: &str = "egress.pre_init";

/// Registry key of the list of `should_enqueue_log_record` handlers: each
/// `log_hooks:new_json` registers one; the first that answers (true or false)
/// decides, nil passes to the next, as in KumoMTA.
const SHOULD_ENQUEUE: &str = "egress.should_enqueue_log_record";

/// Registry key of the list of `validate_config` handlers: KumoMTA's sources,
/// queue and shaping helpers each register one, and every one must run.
const VALIDATE_CONFIG: &str = "egress.validate_config";

/// Installs `kumo` as a global and as `require 'kumo'`, and egressd's built-in
/// `policy-extras` helpers. `memo` holds `kumo.memoize` caches shared by every
/// state of this policy load.
pub(crate) fn install(lua: &Lua, memo: std::sync::Arc<crate::utility::Memo>) -> mlua::Result<()> {
    lua.set_app_data(InitConfig::default());
    lua.set_named_registry_value(HANDLERS, lua.create_table()?)?;
    lua.set_named_registry_value(PRE_INIT, lua.create_table()?)?;
    lua.set_named_registry_value(VALIDATE_CONFIG, lua.create_table()?)?;
    lua.set_named_registry_value(SHOULD_ENQUEUE, lua.create_table()?)?;

    let kumo = lua.create_table()?;
    kumo.set(
        "on",
        lua.create_function(|lua, (event, handler): (String, Function)| {
            warn_if_misspelt(&event);
            if event == "pre_init" {
                let list: Table = lua.named_registry_value(PRE_INIT)?;
                return list.push(handler);
            }
            let handlers: Table = lua.named_registry_value(HANDLERS)?;
            if event == crate::events::SHOULD_ENQUEUE_LOG_RECORD {
                let list: Table = lua.named_registry_value(SHOULD_ENQUEUE)?;
                list.push(handler)?;
                let first = lua.create_function(|lua, args: Variadic<Value>| {
                    let list: Table = lua.named_registry_value(SHOULD_ENQUEUE)?;
                    for handler in list.sequence_values::<Function>() {
                        let answer: Value = handler?.call(args.clone())?;
                        if !answer.is_nil() {
                            return Ok(answer);
                        }
                    }
                    Ok(Value::Nil)
                })?;
                return handlers.set(event, first);
            }
            if event == crate::events::VALIDATE_CONFIG {
                // One handler that runs every registered one, in order.
                let list: Table = lua.named_registry_value(VALIDATE_CONFIG)?;
                list.push(handler)?;
                let all = lua.create_function(|lua, args: Variadic<Value>| {
                    let list: Table = lua.named_registry_value(VALIDATE_CONFIG)?;
                    for handler in list.sequence_values::<Function>() {
                        handler?.call::<()>(args.clone())?;
                    }
                    Ok(())
                })?;
                return handlers.set(event, all);
            }
            handlers.set(event, handler)
        })?,
    )?;
    kumo.set(
        "set_config_monitor_globs",
        lua.create_function(|lua, globs: Vec<String>| {
            declare(lua, |init| init.config_monitor_globs = globs)
        })?,
    )?;
    kumo.set("make_egress_source", maker::<EgressSource>(lua)?)?;
    kumo.set("make_egress_pool", maker::<EgressPool>(lua)?)?;
    kumo.set("make_egress_path", maker::<EgressPathConfig>(lua)?)?;
    kumo.set("make_queue_config", maker::<QueueConfig>(lua)?)?;
    kumo.set(
        "make_listener_domain",
        maker::<egress_source::ListenerDomain>(lua)?,
    )?;

    kumo.set(
        "start_esmtp_listener",
        lua.create_function(|lua, params: Value| {
            let mut listener: EsmtpListener = from_lua(lua, params, "kumo.start_esmtp_listener")?;
            listener.settle_defaults();
            declare(lua, |init| init.esmtp_listeners.push(listener))
        })?,
    )?;
    kumo.set(
        "start_http_listener",
        lua.create_function(|lua, params: Value| {
            let listener: HttpListener = from_lua(lua, params, "kumo.start_http_listener")?;
            declare(lua, |init| init.http_listeners.push(listener))
        })?,
    )?;
    let dns = lua.create_table()?;
    dns.set(
        "configure_resolver",
        lua.create_function(|lua, params: Value| {
            let resolver: ResolverConfig = from_lua(lua, params, "kumo.dns.configure_resolver")?;
            // Built once here so a zone that does not parse or an unreadable trust
            // anchor file is an error in the policy, at the line that declared it.
            egress_dns::Resolver::new(Some(&resolver)).map_err(|e| located(lua, e.to_string()))?;
            declare(lua, |init| init.resolver = Some(resolver))
        })?,
    )?;
    crate::lookup::install(lua, &dns)?;
    crate::utility::unprovided(lua, &dns, "kumo.dns")?;
    kumo.set("dns", dns)?;
    kumo.set(
        "configure_redis_throttles",
        lua.create_function(|lua, params: Value| {
            let redis: RedisThrottles = from_lua(lua, params, "kumo.configure_redis_throttles")?;
            redis
                .validate()
                .map_err(|e| located(lua, format!("kumo.configure_redis_throttles: {e}")))?;
            declare(lua, |init| init.redis_throttles = Some(redis))
        })?,
    )?;

    kumo.set(
        "define_spool",
        lua.create_function(|lua, params: Value| {
            let spool: SpoolDefinition = from_lua(lua, params, "kumo.define_spool")?;
            if spool.kind != "LocalDisk" {
                return Err(located(
                    lua,
                    format!(
                        "kumo.define_spool: kind {:?} is not available in egressd; expected \"LocalDisk\" (or leave kind out)",
                        spool.kind
                    ),
                ));
            }
            match spool.name.as_str() {
                "data" => declare(lua, |init| init.spool = Some(spool)),
                "meta" => Ok(()),
                other => Err(located(
                    lua,
                    format!("kumo.define_spool: name {other:?}: expected \"data\" (or \"meta\", which egressd keeps beside the data)"),
                )),
            }
        })?,
    )?;

    kumo.set(
        "configure_local_logs",
        lua.create_function(|lua, params: Value| {
            let log: egress_record::LocalLogParams =
                from_lua(lua, params, "kumo.configure_local_logs")?;
            if !(0..=21).contains(&log.compression_level) {
                return Err(located(
                    lua,
                    format!(
                        "kumo.configure_local_logs: compression_level {}: expected 0 (zstd's default) or 1 to 21",
                        log.compression_level
                    ),
                ));
            }
            declare(lua, |init| init.local_logs.push(log))
        })?,
    )?;
    kumo.set(
        "configure_log_hook",
        lua.create_function(|lua, params: Value| {
            let hook: egress_record::LogHookParams =
                from_lua(lua, params, "kumo.configure_log_hook")?;
            let name = hook.name.clone();
            let mut duplicate = false;
            declare(lua, |init| {
                duplicate = init.log_hooks.iter().any(|h| h.name == name);
                if !duplicate {
                    init.log_hooks.push(hook)
                }
            })?;
            if duplicate {
                return Err(located(
                    lua,
                    format!("kumo.configure_log_hook: a log hook named {name:?} is already configured; give each hook its own name"),
                ));
            }
            Ok(())
        })?,
    )?;

    crate::dkim::install(lua, &kumo)?;
    // KumoMTA's refusal from a message handler: the client hears exactly this.
    kumo.set(
        "reject",
        lua.create_function(|_, (code, text): (u16, String)| -> mlua::Result<()> {
            Err(mlua::Error::external(egress_policy::Rejection {
                code,
                text,
            }))
        })?,
    )?;

    crate::utility::install(lua, &kumo, memo)?;
    kumo.set("log_debug", logger(lua, tracing::Level::DEBUG)?)?;
    kumo.set("log_info", logger(lua, tracing::Level::INFO)?)?;
    kumo.set("log_warn", logger(lua, tracing::Level::WARN)?)?;
    kumo.set("log_error", logger(lua, tracing::Level::ERROR)?)?;

    crate::utility::unprovided(lua, &kumo, "kumo")?;
    lua.globals().set("kumo", kumo.clone())?;
    let package: Table = lua.globals().get("package")?;
    let loaded: Table = package.get("loaded")?;
    loaded.set("kumo", kumo)?;
    crate::extras::install(lua, &package)?;
    Ok(())
}

/// A handler registered under a near miss of an event we raise would never run;
/// say so. Other names are fine: KumoMTA policies register events of their own.
fn warn_if_misspelt(event: &str) {
    let events = crate::events::ALL;
    if events.contains(&event) {
        return;
    }
    if let Some(near) = egress_source::nearest(event, events) {
        tracing::warn!(target: "policy", "kumo.on('{event}', ...) will never run: egress raises no such event; did you mean '{near}'?");
    }
}

/// `kumo.make_*`: a table in, a validated definition (userdata) out.
fn maker<T: Definition>(lua: &Lua) -> mlua::Result<Function> {
    lua.create_function(|lua, params: Value| {
        if let Value::Table(t) = &params {
            T::notice(t);
        }
        let made: T = from_lua(lua, params, T::MAKER)?;
        made.check(lua)
            .map_err(|e| located(lua, format!("{}: {e}", T::MAKER)))?;
        lua.create_userdata(Made(made))
    })
}

fn logger(lua: &Lua, level: tracing::Level) -> mlua::Result<Function> {
    lua.create_function(move |lua, args: Variadic<Value>| {
        let mut parts = Vec::with_capacity(args.len());
        for arg in args.iter() {
            parts.push(match arg {
                Value::String(s) => s.to_string_lossy(),
                other => lua
                    .coerce_string(other.clone())?
                    .map(|s| s.to_string_lossy())
                    .unwrap_or_else(|| format!("{other:?}")),
            });
        }
        let message = parts.join(" ");
        match level {
            tracing::Level::DEBUG => tracing::debug!(target: "policy", "{message}"),
            tracing::Level::INFO => tracing::info!(target: "policy", "{message}"),
            tracing::Level::WARN => tracing::warn!(target: "policy", "{message}"),
            _ => tracing::error!(target: "policy", "{message}"),
        }
        Ok(())
    })
}
