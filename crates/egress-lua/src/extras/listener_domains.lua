-- policy-extras.listener_domains, written for egressd from KumoMTA's documented
-- file format. A file's top-level `["DOMAIN"]` tables apply on every listener;
-- `[listener."IP:PORT"."DOMAIN"]` tables on that listener only. A table takes
-- kumo.make_listener_domain's keys (relay_to, relay_from, log_oob, log_arf) and
-- `relay_from_authz`: authorization ids whose authenticated sessions may relay
-- from the address they connect from.
--
-- Domains: an exact name; `*.example.com` for the names under example.com (not
-- example.com itself; the most specific wildcard wins); `*` as the default.
-- A lookup tries the listener's own table (exact, wildcard, `*`), then the
-- every-listener table (exact, wildcard), then its `*`: the first entry found is
-- the answer, whole (a more explicit entry replaces the default, it does not
-- merge with it). Several files merge in order, key by key (a later file wins).
-- A file name may be a table instead (its data inline).
--
-- Everything is loaded and checked at setup, so a mistake is an error when the
-- policy loads (`egressd check` prints what was loaded); edits take effect on
-- reload (SIGHUP, or kumo.set_config_monitor_globs naming the files).
local common = require 'policy-extras.common'

local mod = {}

local OWN_KEYS = { relay_from_authz = true }

local function lower(s)
  return (tostring(s):lower():gsub('%.$', ''))
end

-- The entry for `domain` in one listener's table: exact, then wildcards from
-- the most specific; `with_default` adds its `*`.
local function find(map, domain, with_default)
  if not map then
    return nil
  end
  if map[domain] then
    return map[domain]
  end
  local rest = domain
  while true do
    local dot = rest:find('.', 1, true)
    if not dot then
      break
    end
    rest = rest:sub(dot + 1)
    if map['*.' .. rest] then
      return map['*.' .. rest]
    end
  end
  if with_default then
    return map['*']
  end
  return nil
end

-- `received_from` is `ip:port` (`[v6]:port`): the address.
local function peer_ip(received_from)
  if not received_from then
    return nil
  end
  local v6 = received_from:match('^%[(.-)%]')
  return v6 or received_from:match('^(.*):%d+$') or received_from
end

local function contains(list, value)
  for _, v in ipairs(list) do
    if v == value then
      return true
    end
  end
  return false
end

-- The make_listener_domain part of an entry (without egressd's own keys).
local function params_of(entry)
  local params = {}
  for k, v in pairs(entry) do
    if not OWN_KEYS[k] then
      params[k] = v
    end
  end
  return params
end

local function check(entry, where)
  if type(entry) ~= 'table' then
    error(string.format('%s: expected a table such as { relay_to = true }, got %s', where, type(entry)), 0)
  end
  local authz = entry.relay_from_authz
  if authz ~= nil then
    local ok = type(authz) == 'table'
    for _, v in pairs(ok and authz or {}) do
      ok = ok and type(v) == 'string'
    end
    if not ok then
      error(string.format("%s: relay_from_authz: expected a list of authorization ids such as [ 'user1' ], got %s", where, type(authz)), 0)
    end
  end
  common.make(kumo.make_listener_domain, 'kumo.make_listener_domain', where, params_of(entry))
end

function mod:setup(files)
  if type(files) ~= 'table' then
    error(string.format('listener_domains:setup: expected a list of files, got %s', type(files)), 2)
  end
  -- listener -> domain -> entry
  local by_listener = {}
  local function add(listener, domain, entry, where)
    check(entry, where)
    by_listener[listener] = by_listener[listener] or {}
    local into = by_listener[listener][lower(domain)] or {}
    by_listener[listener][lower(domain)] = common.merge(into, entry)
  end
  for i, file in ipairs(files) do
    local data, label
    if type(file) == 'table' then
      data, label = file, string.format('(inline table %d)', i)
    else
      data, label = common.load(file), file
    end
    for _, name in ipairs(common.sorted_keys(data)) do
      local entry = data[name]
      if name == 'listener' then
        if type(entry) ~= 'table' then
          error(string.format('%s: [listener]: expected tables such as [listener."127.0.0.1:25"."example.com"], got %s', label, type(entry)), 0)
        end
        for _, listener in ipairs(common.sorted_keys(entry)) do
          local domains = entry[listener]
          if type(domains) ~= 'table' then
            error(string.format('%s: [listener.%q]: expected domain tables, got %s', label, listener, type(domains)), 0)
          end
          for _, domain in ipairs(common.sorted_keys(domains)) do
            add(listener, domain, domains[domain], string.format('%s: [listener.%q.%q]', label, listener, domain))
          end
        end
      else
        add('*', name, entry, string.format('%s: [%q]', label, name))
      end
    end
  end
  common.declare_listener_domains(by_listener)

  return function(domain, listener, conn_meta)
    local name = lower(domain)
    local entry = find(by_listener[listener], name, true)
      or find(by_listener['*'], name, false)
      or (by_listener['*'] and by_listener['*']['*'])
    if not entry then
      return nil
    end
    local params = params_of(entry)
    if entry.relay_from_authz and conn_meta then
      local authz = conn_meta:get_meta 'authz_id'
      if authz and contains(entry.relay_from_authz, authz) then
        params.relay_from = { peer_ip(conn_meta:get_meta 'received_from') }
      end
    end
    return kumo.make_listener_domain(params)
  end
end

return mod
