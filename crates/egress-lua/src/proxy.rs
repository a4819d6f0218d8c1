//! The `proxy` module of KumoProxy's policy (`require 'proxy'`), for egress-proxy:
//! `proxy.start_proxy_listener { … }` and `proxy.start_http_listener { … }`,
//! called from `kumo.on('proxy_init', …)`. egressd ignores what it declares.

use crate::declarations::declare;
use crate::declarations::{HttpListener, InitConfig, ProxyListenerParams};
use crate::error::from_lua;
use mlua::{Lua, Table, Value};

/// Installs `proxy` as a global and as `require 'proxy'`.
pub(crate) fn install(lua: &Lua) -> mlua::Result<()> {
    let package: Table = lua.globals().get("package")?;
    let proxy = lua.create_table()?;
    proxy.set(
        "start_proxy_listener",
        lua.create_function(|lua, params: Value| {
            let listener: ProxyListenerParams =
                from_lua(lua, params, "proxy.start_proxy_listener")?;
            declare(lua, |init: &mut InitConfig| {
                init.proxy_listeners.push(listener)
            })
        })?,
    )?;
    proxy.set(
        "start_http_listener",
        lua.create_function(|lua, params: Value| {
            let listener: HttpListener = from_lua(lua, params, "proxy.start_http_listener")?;
            declare(lua, |init: &mut InitConfig| {
                init.http_listeners.push(listener)
            })
        })?,
    )?;
    lua.globals().set("proxy", proxy.clone())?;
    let loaded: Table = package.get("loaded")?;
    loaded.set("proxy", proxy)
}
