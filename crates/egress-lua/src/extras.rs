//! egressd's built-in `policy-extras` helpers — `sources`, `queue`, `shaping`,
//! `listener_domains`, `log_hooks`, `dkim_sign` —
//! written here in Lua from KumoMTA's documented file formats (`extras/*.lua`),
//! so `require 'policy-extras.sources'` resolves without any file on disk.

use mlua::{Lua, Table, Value};

const MODULES: &[(&str, &str)] = &[
    ("policy-extras.common", include_str!("extras/common.lua")),
    ("policy-extras.sources", include_str!("extras/sources.lua")),
    ("policy-extras.queue", include_str!("extras/queue.lua")),
    ("policy-extras.shaping", include_str!("extras/shaping.lua")),
    (
        "policy-extras.listener_domains",
        include_str!("extras/listener_domains.lua"),
    ),
    (
        "policy-extras.log_hooks",
        include_str!("extras/log_hooks.lua"),
    ),
    (
        "policy-extras.dkim_sign",
        include_str!("extras/dkim_sign.lua"),
    ),
];

/// Logs `text` at WARN the first time this process sees it. Every Lua state loads
/// the policy (one per CPU), so a helper's warning about a setting it ignores would
/// otherwise be printed once per state.
pub(crate) fn warn_once(text: &str) {
    static SAID: std::sync::OnceLock<std::sync::Mutex<std::collections::HashSet<String>>> =
        std::sync::OnceLock::new();
    let first = SAID
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(text.to_owned());
    if first {
        tracing::warn!(target: "policy", "{text}");
    }
}

/// Registers the helpers in `package.preload`, and a searcher that explains a
/// `policy-extras` module egressd does not have.
pub(crate) fn install(lua: &Lua, package: &Table) -> mlua::Result<()> {
    let preload: Table = package.get("preload")?;
    for (name, code) in MODULES {
        let chunk = format!("@{}.lua", name.replace('.', "/"));
        let is_common = *name == "policy-extras.common";
        preload.set(
            *name,
            lua.create_function(move |lua, _: Value| {
                let module = lua.load(*code).set_name(chunk.as_str()).eval::<Value>()?;
                if let (true, Value::Table(common)) = (is_common, &module) {
                    common.set(
                        "warn_once",
                        lua.create_function(|_, text: String| {
                            warn_once(&text);
                            Ok(())
                        })?,
                    )?;
                    // What listener_domains loaded, for `egressd check` to print.
                    common.set(
                        "declare_listener_domains",
                        lua.create_function(|lua, data: Value| {
                            use mlua::LuaSerdeExt;
                            let json: serde_json::Value = lua.from_value(data)?;
                            crate::declarations::declare(lua, |init| {
                                init.listener_domains = Some(json)
                            })
                        })?,
                    )?;
                }
                Ok(module)
            })?,
        )?;
    }
    let searchers: Table = package.get("searchers")?;
    searchers.push(lua.create_function(|_, name: String| {
        Ok(match name.strip_prefix("policy-extras.") {
            Some(_) => format!(
                "\n\tegressd does not provide '{name}'; its built-in helpers are policy-extras.sources, policy-extras.queue, policy-extras.shaping, policy-extras.listener_domains, policy-extras.log_hooks and policy-extras.dkim_sign"
            ),
            None => String::new(),
        })
    })?)?;
    Ok(())
}
