//! Policies the relay tests share (the listener on `{listen}`, filled in by the
//! harness that starts the relay).

use crate::{ScriptedDestination, SharedRedis};
use std::net::SocketAddr;
use std::path::Path;

/// The policy most relay tests need: a listener on `{listen}` (left for the caller
/// to fill) with the extra Lua fields `listener`, every domain routed to `mx` through
/// pool `main` = one source, `ip-2` (127.0.0.2), plus `extra` Lua.
pub fn relay_policy(listener: &str, mx: &str, extra: &str) -> String {
    format!(
        "kumo.on('init', function() kumo.start_esmtp_listener {{ listen = '{{listen}}', {listener} }} end)
         kumo.on('get_queue_config', function(domain)
           return kumo.make_queue_config {{ egress_pool = 'main', protocol = {{ smtp = {{ mx_list = {{ '{mx}' }} }} }} }}
         end)
         {IP2_POOL}
         {extra}"
    )
}

/// Pool `main` (any name) = one source, `ip-2`, leaving from 127.0.0.2.
pub const IP2_POOL: &str = "
kumo.on('get_egress_pool', function(name)
  return kumo.make_egress_pool { name = name, entries = { { name = 'ip-2' } } }
end)
kumo.on('get_egress_source', function(name)
  return kumo.make_egress_source { name = name, source_address = '127.0.0.2' }
end)";

/// [`relay_policy`] whose path config is `kumo.make_egress_path { path }`.
pub fn path_policy(mx: &str, path: &str) -> String {
    relay_policy(
        "",
        mx,
        &format!(
            "kumo.on('get_egress_path_config', function(domain, source, site)
               return kumo.make_egress_path {{ {path} }}
             end)"
        ),
    )
}

/// `[ip]:port`, the mx_list form of an address.
pub fn mx_entry(addr: SocketAddr) -> String {
    format!("[{}]:{}", addr.ip(), addr.port())
}

/// A policy routing everything to `mx` through pool `main` with `pool` entries;
/// `sources` maps names to `make_egress_source` fields (Lua); `path` is the body of
/// `get_egress_path_config(domain, source, site)`; `init` more init calls.
pub fn shaping_policy(mx: &str, pool: &str, sources: &str, path: &str, init: &str) -> String {
    format!(
        "kumo.on('init', function()
           kumo.start_esmtp_listener {{ listen = '{{listen}}' }}
           {init}
         end)
         kumo.on('get_queue_config', function(domain)
           return kumo.make_queue_config {{ egress_pool = 'main', protocol = {{ smtp = {{ mx_list = {{ '{mx}' }} }} }} }}
         end)
         kumo.on('get_egress_pool', function(name)
           return kumo.make_egress_pool {{ name = name, entries = {{ {pool} }} }}
         end)
         local SOURCES = {{ {sources} }}
         kumo.on('get_egress_source', function(name)
           local params = {{ name = name }}
           for k, v in pairs(SOURCES[name]) do params[k] = v end
           return kumo.make_egress_source(params)
         end)
         kumo.on('get_egress_path_config', function(domain, source, site)
           {path}
         end)"
    )
}

/// The policy of the two-node connection-limit tests: three connections at once to
/// `dest`, shared through `redis`. An idle session keeps its slot for its
/// `idle_timeout`, so with so few slots shared by two nodes it is short: the other
/// node's transactions get the slots within seconds, not a minute.
pub fn three_connections(dest: &ScriptedDestination, redis: &impl SharedRedis) -> String {
    shaping_policy(
        &mx_entry(dest.addr),
        "{ name = 'ip-2' }",
        "['ip-2'] = { source_address = '127.0.0.2' }",
        "return kumo.make_egress_path { connection_limit = 3, idle_timeout = '3s' }",
        &redis.throttles_init(),
    )
}

/// Routes each domain in `routes` to its mx entry (others to `[127.0.0.1]:9`,
/// nothing listening), retries every second, spools into `spool` bounded by
/// `max_bytes`, with an HTTP listener on `{http}`.
pub fn spool_policy(spool: &Path, max_bytes: u64, routes: &[(&str, String)]) -> String {
    let table: Vec<String> = routes
        .iter()
        .map(|(domain, mx)| format!("['{domain}'] = '{mx}'"))
        .collect();
    format!(
        "kumo.on('init', function()
           kumo.start_esmtp_listener {{ listen = '{{listen}}' }}
           kumo.start_http_listener {{ listen = '{{http}}' }}
           kumo.define_spool {{ name = 'data', path = '{}', max_spool_bytes = {max_bytes} }}
         end)
         local MX = {{ {} }}
         kumo.on('get_queue_config', function(domain)
           return kumo.make_queue_config {{ egress_pool = 'main', retry_interval = '1s', max_retry_interval = '2s',
             protocol = {{ smtp = {{ mx_list = {{ MX[domain] or '[127.0.0.1]:9' }} }} }} }}
         end)
         {}",
        spool.display(),
        table.join(", "),
        IP2_POOL
    )
}
