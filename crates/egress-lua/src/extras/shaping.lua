-- policy-extras.shaping, written for egressd from KumoMTA's documented
-- shaping.toml format: `["default"]`, `["DOMAIN"]` and
-- `["DOMAIN".sources."SOURCE"]` tables of egress path keys.
--
-- mx_rollup (default true): a domain's settings apply to its *site* — every
-- domain whose MX hosts factor to the same site name — so the domain's MX is
-- looked up when the helper is set up (kumo.dns.lookup_mx, through the resolver
-- configured before the call, else the system's); `mx_rollup = false` applies
-- them to that domain alone. Precedence, least to most specific: default, the
-- site's entry, the domain's own entry; then the same order of `sources`
-- overrides for the source in use.
--
-- `shaping:setup { files }` returns the get_egress_path_config handler (register
-- it with kumo.on); `shaping:setup_with_automation { extra_files = { ... } }`
-- returns `{ get_egress_path_config = ... }` as KumoMTA's does. egressd has no
-- Traffic Shaping Automation service: `publish`/`subscribe` are accepted and
-- unused, `[provider.*]` blocks and `automation` rules are ignored with a
-- warning, as are KumoMTA path keys egressd does not have.
local common = require 'policy-extras.common'

local mod = {}

local IGNORED = {
  idle_timeout = true,
  consecutive_connection_failures_before_delay = true,
  automation = true,
  replace_base = true,
  prohibited_hosts = true,
  skip_hosts = true,
  max_ready = true,
  provider_connection_limit = true,
  provider_max_message_rate = true,
  remember_broken_tls = true,
  allow_smtp_auth_plain_without_valid_certificate = true,
  aggressive_connection_opening = true,
  reconnect_strategy = true,
  system_shutdown_timeout = true,
  tls_prefer_openssl = true,
}

local ignore = common.ignored

-- The path keys of one table (without mx_rollup and sources).
local function path_keys(t, where)
  local out = {}
  for _, k in ipairs(common.sorted_keys(t)) do
    if IGNORED[k] then
      ignore(where, k)
    elseif k ~= 'mx_rollup' and k ~= 'sources' then
      out[k] = t[k]
    end
  end
  return out
end

function mod:setup(files)
  local default = { own = {}, sources = {} }
  local by_site, by_domain = {}, {}
  local checks = {}
  for _, path in ipairs(files) do
    local data = common.load(path)
    for _, name in ipairs(common.sorted_keys(data)) do
      local entry = data[name]
      local where = string.format('%s: [%q]', path, name)
      if name == 'provider' then
        ignore(path, '[provider.*]')
      elseif type(entry) ~= 'table' then
        error(string.format('%s: expected a table of egress path settings, got %s', where, type(entry)), 0)
      else
        local target
        if name == 'default' then
          target = default
        elseif entry.mx_rollup == false then
          by_domain[name] = by_domain[name] or { own = {}, sources = {} }
          target = by_domain[name]
        else
          local ok, mx = pcall(kumo.dns.lookup_mx, name)
          local site = ok and mx.site_name or nil
          if not site or site == '' then
            kumo.log_warn(string.format('%s: cannot find the site of %s (%s); its settings apply to the domain alone', where, name, tostring(mx)))
            by_domain[name] = by_domain[name] or { own = {}, sources = {} }
            target = by_domain[name]
          else
            by_site[site] = by_site[site] or { own = {}, sources = {} }
            target = by_site[site]
          end
        end
        local own = path_keys(entry, where)
        common.merge(target.own, own)
        table.insert(checks, { where = where, params = own })
        for _, source in ipairs(common.sorted_keys(entry.sources or {})) do
          local swhere = string.format('%s: [%q.sources.%q]', path, name, source)
          local overrides = path_keys(entry.sources[source], swhere)
          target.sources[source] = common.merge(target.sources[source] or {}, overrides)
          table.insert(checks, { where = swhere, params = overrides })
        end
      end
    end
  end
  -- Every table is checked now: a bad key or value fails the load.
  for _, c in ipairs(checks) do
    common.make(kumo.make_egress_path, 'kumo.make_egress_path', c.where, c.params)
  end

  return function(domain, source, site_name)
    local params = common.merge({}, default.own)
    local layers = { default, site_name and by_site[site_name], by_domain[domain] }
    for i = 2, 3 do
      if layers[i] then
        common.merge(params, layers[i].own)
      end
    end
    for i = 1, 3 do
      if layers[i] and layers[i].sources[source] then
        common.merge(params, layers[i].sources[source])
      end
    end
    return kumo.make_egress_path(params)
  end
end

function mod:setup_with_automation(options)
  options = options or {}
  local handler = self:setup(options.extra_files or {})
  return {
    get_egress_path_config = handler,
    setup_publish = function() end,
  }
end

return mod
