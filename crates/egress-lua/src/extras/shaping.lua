-- policy-extras.shaping, written for egressd from KumoMTA's documented
-- shaping.toml format: `["default"]`, `["DOMAIN"]`, `[provider."NAME"]` and their
-- `.sources."SOURCE"` tables of egress path keys.
--
-- mx_rollup (default true): a domain's settings apply to its *site* — every
-- domain whose MX hosts factor to the same site name — so the domain's MX is
-- looked up when the helper is set up (kumo.dns.lookup_mx, through the resolver
-- configured before the call, else the system's); `mx_rollup = false` applies
-- them to that domain alone.
--
-- Providers: `match = [ {MXSuffix = '.yahoodns.net'}, {DomainSuffix = '.example'},
-- {HostName = 'mx.example.net'} ]`. A domain matches when its name ends with a
-- DomainSuffix, or when *every* one of its MX host names ends with an MXSuffix or
-- equals a HostName (plain suffix comparison, no patterns). The domain's MX is
-- looked up when a path config is asked for (the answer is cached with the path
-- config). `provider_connection_limit` and `provider_max_message_rate` hold across
-- all of the provider's sites, per source: they become the shared
-- `additional_connection_limits` / `additional_message_rate_throttles` entries
-- `shaping-provider-NAME-SOURCE-limit` / `-rate`.
--
-- Resolution, least to most specific (KumoMTA's documented order): default;
-- matching providers; matching providers' `sources` for the source in use; the
-- site's entry; the domain's own (mx_rollup = false) entry; then the default's,
-- the site's and the domain's `sources` for the source in use. Within a step,
-- files in the order given; within one file, blocks by name (a TOML table
-- reaches Lua without its order). `replace_base = true` in a block drops what
-- was accumulated before it. The `additional_*` maps merge entry by entry.
--
-- `shaping:setup { files }` returns the get_egress_path_config handler (register
-- it with kumo.on); `shaping:setup_with_automation { extra_files = { ... } }`
-- returns `{ get_egress_path_config = ... }` as KumoMTA's does. `automation`
-- rules (default, domain/site and provider blocks) travel in the path config's
-- `automation` key, each with its origin (file, block, index) and, for a
-- provider's rules, the provider (a Suspend then covers all its sites); the relay matches
-- them against the destination's replies itself, so `publish`/`subscribe` are
-- accepted and unused. Every other key is a path key and goes to
-- kumo.make_egress_path, which knows them all (the few without an effect in
-- egressd are said once at WARN).
local common = require 'policy-extras.common'

local mod = {}


-- Keys of a block that are not path keys.
local STRUCTURE = { mx_rollup = true, sources = true, replace_base = true, match = true, automation = true }
local PROVIDER_KEYS = { provider_connection_limit = true, provider_max_message_rate = true }
-- Path keys whose values are maps merged entry by entry.
local MAPS = {
  additional_connection_limits = true,
  additional_message_rate_throttles = true,
  additional_source_selection_rates = true,
}
local MATCHERS = { MXSuffix = true, DomainSuffix = true, HostName = true }

-- One block of settings: its path keys, its provider limits (provider blocks
-- only), whether it replaces what came before, and where it was written.
local function block(t, where, is_provider, is_source)
  local b = { params = {}, provider = {}, automation = {}, replace = t.replace_base == true, where = where }
  if t.automation ~= nil then
    if is_source then
      error(string.format('%s: automation rules belong to the domain, site or provider block, not to one of its sources', where), 0)
    end
    if type(t.automation) ~= 'table' then
      error(string.format('%s: automation: expected a list of rules ([[...automation]] tables), got %s', where, type(t.automation)), 0)
    end
    for i, rule in ipairs(t.automation) do
      local r = common.merge({}, rule)
      r.origin = string.format('%s.automation[%d]', where, i)
      table.insert(b.automation, r)
    end
  end
  for _, k in ipairs(common.sorted_keys(t)) do
    if PROVIDER_KEYS[k] then
      if not is_provider then
        error(string.format('%s: %s belongs in a [provider."NAME"] block (it limits all of a provider\'s sites together); use connection_limit or max_message_rate here', where, k), 0)
      end
      b.provider[k] = t[k]
    elseif not STRUCTURE[k] then
      b.params[k] = t[k]
    end
  end
  return b
end

-- Merges a block's settings over `params` (after dropping them for replace_base),
-- noting in `origin` which block each value came from.
local function apply(params, b, origin)
  if b.replace then
    for k in pairs(params) do
      params[k] = nil
      origin[k] = nil
    end
  end
  for _, k in ipairs(common.sorted_keys(b.params)) do
    origin[k] = b.where
    local v = b.params[k]
    if MAPS[k] and type(v) == 'table' and type(params[k]) == 'table' then
      params[k] = common.merge(common.merge({}, params[k]), v)
    else
      params[k] = v
    end
  end
  return params
end

-- A provider block's limits for `source`, as the shared additional_* entries.
local function apply_provider_limits(params, name, source, limits, origin, where)
  if origin and (limits.provider_connection_limit ~= nil or limits.provider_max_message_rate ~= nil) then
    for k in pairs(limits) do
      origin[k] = where
    end
  end
  if limits.provider_connection_limit ~= nil then
    params.additional_connection_limits = common.merge({}, params.additional_connection_limits or {})
    params.additional_connection_limits[string.format('shaping-provider-%s-%s-limit', name, source)] =
      limits.provider_connection_limit
  end
  if limits.provider_max_message_rate ~= nil then
    params.additional_message_rate_throttles = common.merge({}, params.additional_message_rate_throttles or {})
    params.additional_message_rate_throttles[string.format('shaping-provider-%s-%s-rate', name, source)] =
      limits.provider_max_message_rate
  end
end

local function lower_name(s)
  return (tostring(s):lower():gsub('%.$', ''))
end

local function ends_with(s, suffix)
  return suffix == '' or s:sub(-#suffix) == suffix
end

-- What KumoMTA's default shaping file calls the providers that operators (and
-- its community file) often name after a brand or domain.
local PROVIDER_ALIASES = {
  gmail = 'google', googlemail = 'google', hotmail = 'outlook', live = 'outlook',
  msn = 'outlook', microsoft = 'office365', icloud = 'apple', me = 'apple',
  aol = 'yahoo', ymail = 'yahoo',
}

-- Edit distance (Levenshtein) between two short names.
local function distance(a, b)
  local prev = {}
  for j = 0, #b do
    prev[j] = j
  end
  for i = 1, #a do
    local cur = { [0] = i }
    for j = 1, #b do
      local cost = a:sub(i, i) == b:sub(j, j) and 0 or 1
      cur[j] = math.min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
    end
    prev = cur
  end
  return prev[#b]
end

-- The provider name among `candidates` that `name` most likely meant, if any: a
-- near spelling, else the name KumoMTA's default file uses for that brand.
local function near_miss(name, candidates)
  local lname = name:lower()
  local best, best_d
  for _, c in ipairs(candidates) do
    local d = distance(lname, c:lower())
    if d <= math.max(2, #lname // 3) and (not best_d or d < best_d) then
      best, best_d = c, d
    end
  end
  if best then
    return best
  end
  local alias = PROVIDER_ALIASES[lname]
  for _, c in ipairs(candidates) do
    if c == alias then
      return c
    end
  end
  return nil
end

-- A provider's `match` list, checked: { domain = {suffixes}, mx = {suffixes}, hosts = {names} }.
local function matchers(list, where)
  -- An empty list is allowed, as in KumoMTA: the provider matches nothing.
  if type(list) ~= 'table' then
    error(string.format('%s: match: expected a list such as [ {MXSuffix = ".example.net"} ], got %s', where, type(list)), 0)
  end
  local m = { domain = {}, mx = {}, hosts = {} }
  for i, item in ipairs(list) do
    local kinds = type(item) == 'table' and common.sorted_keys(item) or {}
    local kind = kinds[1]
    if #kinds ~= 1 or not MATCHERS[kind] or type(item[kind]) ~= 'string' then
      error(string.format('%s: match[%d]: expected one of {MXSuffix = "…"}, {DomainSuffix = "…"}, {HostName = "…"}', where, i), 0)
    end
    local value = lower_name(item[kind])
    if kind == 'DomainSuffix' then
      table.insert(m.domain, value)
    elseif kind == 'MXSuffix' then
      table.insert(m.mx, value)
    else
      table.insert(m.hosts, value)
    end
  end
  return m
end

-- Whether a provider's matchers take `domain` with MX `hosts` (nil: unknown).
local function provider_matches(m, domain, hosts)
  for _, suffix in ipairs(m.domain) do
    if ends_with(domain, suffix) then
      return true
    end
  end
  if (#m.mx == 0 and #m.hosts == 0) or not hosts or #hosts == 0 then
    return false
  end
  for _, host in ipairs(hosts) do
    local h, ok = lower_name(host), false
    for _, name in ipairs(m.hosts) do
      ok = ok or h == name
    end
    for _, suffix in ipairs(m.mx) do
      ok = ok or ends_with(h, suffix)
    end
    if not ok then
      return false
    end
  end
  return true
end

local function new_target()
  return { own = {}, sources = {} }
end

local function add_sources(target, entry, path, label, is_provider, checks)
  for _, source in ipairs(common.sorted_keys(entry.sources or {})) do
    local swhere = string.format('%s: [%s.sources.%q]', path, label, source)
    local b = block(entry.sources[source], swhere, is_provider, true)
    target.sources[source] = target.sources[source] or {}
    table.insert(target.sources[source], b)
    table.insert(checks, b)
  end
end

function mod:setup(files)
  local default = new_target()
  local by_site, by_domain = {}, {}
  local providers, provider_order = {}, {}
  local checks = {}
  for _, path in ipairs(files) do
    local data = common.load(path)
    for _, name in ipairs(common.sorted_keys(data)) do
      local entry = data[name]
      local where = string.format('%s: [%q]', path, name)
      if type(entry) ~= 'table' then
        error(string.format('%s: expected a table of egress path settings, got %s', where, type(entry)), 0)
      elseif name == 'provider' then
        for _, pname in ipairs(common.sorted_keys(entry)) do
          local pentry = entry[pname]
          local label = string.format('provider.%q', pname)
          local pwhere = string.format('%s: [%s]', path, label)
          if type(pentry) ~= 'table' then
            error(string.format('%s: expected a table with match and egress path settings, got %s', pwhere, type(pentry)), 0)
          end
          local p = providers[pname]
          if not p then
            p = new_target()
            p.name = pname
            p.first_file = path
            providers[pname] = p
            table.insert(provider_order, pname)
          end
          if pentry.match ~= nil then
            p.match = matchers(pentry.match, pwhere)
          end
          local b = block(pentry, pwhere, true)
          for _, r in ipairs(b.automation) do
            r.provider = pname
          end
          table.insert(p.own, b)
          table.insert(checks, b)
          add_sources(p, pentry, path, label, true, checks)
        end
      else
        local target
        if name == 'default' then
          target = default
        elseif entry.mx_rollup == false then
          by_domain[name] = by_domain[name] or new_target()
          target = by_domain[name]
        else
          local ok, mx = pcall(kumo.dns.lookup_mx, name)
          local site = ok and mx.site_name or nil
          if not site or site == '' then
            common.warn_once(string.format('%s: cannot find the site of %s (%s); its settings apply to the domain alone', where, name, ok and 'no site name' or common.words(mx)))
            by_domain[name] = by_domain[name] or new_target()
            target = by_domain[name]
          else
            by_site[site] = by_site[site] or new_target()
            target = by_site[site]
          end
        end
        local b = block(entry, where, false)
        table.insert(target.own, b)
        table.insert(checks, b)
        add_sources(target, entry, path, string.format('%q', name), false, checks)
      end
    end
  end
  local wants_mx = false
  local matched = {}
  for _, pname in ipairs(provider_order) do
    local m = providers[pname].match
    if m and #m.domain + #m.mx + #m.hosts > 0 then
      table.insert(matched, pname)
    end
  end
  for _, pname in ipairs(provider_order) do
    local p = providers[pname]
    if not p.match or #p.match.domain + #p.match.mx + #p.match.hosts == 0 then
      -- KumoMTA loads such a block (its shipped community file has several), and
      -- its rules never fire: say so once, with the name the operator may have meant.
      p.match = p.match or { domain = {}, mx = {}, hosts = {} }
      local hint = near_miss(pname, matched)
      common.warn_once(string.format('provider %q has no match list, so it matches no destination (as in KumoMTA)%s (first defined in %s)',
        pname, hint and string.format('; did you mean %q?', hint) or '', p.first_file))
    end
    wants_mx = wants_mx or #p.match.mx > 0 or #p.match.hosts > 0
  end
  -- Every table is checked now: a bad key or value fails the load.
  for _, b in ipairs(checks) do
    local params = common.merge({}, b.params)
    apply_provider_limits(params, 'check', 'check', b.provider)
    if #b.automation > 0 then
      params.automation = b.automation
    end
    common.make(kumo.make_egress_path, 'kumo.make_egress_path', b.where, params)
  end

  -- The providers that take `domain`, in order.
  local function matching(domain)
    if #provider_order == 0 then
      return {}
    end
    local hosts
    if wants_mx then
      local ok, mx = pcall(kumo.dns.lookup_mx, domain)
      if ok and type(mx) == 'table' then
        hosts = mx.hosts
      else
        common.warn_once(string.format('policy-extras.shaping: cannot look up the MX of %s (%s); only DomainSuffix provider matches apply to it', domain, common.words(mx)))
      end
    end
    local out = {}
    for _, pname in ipairs(provider_order) do
      if provider_matches(providers[pname].match, lower_name(domain), hosts) then
        table.insert(out, providers[pname])
      end
    end
    return out
  end

  -- Rules accumulate (replace_base does not drop them): default, providers, site, domain.
  local function add_rules(rules, b)
    for _, r in ipairs(b.automation) do
      table.insert(rules, r)
    end
  end

  return function(domain, source, site_name)
    local params, rules, origin = {}, {}, {}
    for _, b in ipairs(default.own) do
      apply(params, b, origin)
      add_rules(rules, b)
    end
    local matched = matching(domain)
    local names = {}
    for _, p in ipairs(matched) do
      table.insert(names, p.name)
      for _, b in ipairs(p.own) do
        apply(params, b, origin)
        apply_provider_limits(params, p.name, source, b.provider, origin, b.where)
        add_rules(rules, b)
      end
    end
    for _, p in ipairs(matched) do
      for _, b in ipairs(p.sources[source] or {}) do
        apply(params, b, origin)
        apply_provider_limits(params, p.name, source, b.provider, origin, b.where)
      end
    end
    local site, own = site_name and by_site[site_name], by_domain[domain]
    for _, target in ipairs({ site or false, own or false }) do
      for _, b in ipairs(target and target.own or {}) do
        apply(params, b, origin)
        add_rules(rules, b)
      end
    end
    for _, target in ipairs({ default, site or false, own or false }) do
      for _, b in ipairs(target and target.sources[source] or {}) do
        apply(params, b, origin)
      end
    end
    if #rules > 0 then
      params.automation = rules
    end
    if #names > 0 then
      params.providers = names
    end
    if next(origin) ~= nil then
      params.provenance = origin
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
