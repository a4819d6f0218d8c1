-- policy-extras.sources, written for egressd from KumoMTA's documented file
-- format: `[source."NAME"]` tables take every make_egress_source key, and
-- `[pool."POOL"."SOURCE"]` tables take `weight` (default 1). Several files merge
-- in order (a later file's keys win). Everything is built and checked at setup,
-- so a mistake is an error when the policy loads (`egressd check`), not at the
-- first message.
local common = require 'policy-extras.common'

local mod = {}

function mod:setup(files)
  local sources, pools, origin = {}, {}, {}
  for _, path in ipairs(files) do
    local data = common.load(path)
    for _, key in ipairs(common.sorted_keys(data)) do
      if key ~= 'source' and key ~= 'pool' then
        error(string.format('%s: unknown table [%s]; expected [source."NAME"] or [pool."POOL"."SOURCE"]', path, key), 0)
      end
    end
    for _, name in ipairs(common.sorted_keys(data.source or {})) do
      sources[name] = common.merge(sources[name] or {}, data.source[name])
      origin['source.' .. name] = path
    end
    for _, pool in ipairs(common.sorted_keys(data.pool or {})) do
      local members = pools[pool] or {}
      for _, member in ipairs(common.sorted_keys(data.pool[pool])) do
        local opts = data.pool[pool][member]
        local where = string.format('%s: [pool.%q.%q]', path, pool, member)
        if type(opts) ~= 'table' then
          error(string.format('%s: expected a table such as { weight = 2 }, got %s', where, type(opts)), 0)
        end
        for _, k in ipairs(common.sorted_keys(opts)) do
          if k ~= 'weight' then
            error(string.format('%s: unknown key %q; expected weight', where, k), 0)
          end
        end
        if opts.weight ~= nil and (math.type(opts.weight) ~= 'integer' or opts.weight < 0) then
          error(string.format('%s: weight: expected a whole number 0 or more, got %s', where, tostring(opts.weight)), 0)
        end
        members[member] = { weight = opts.weight or 1, path = path }
      end
      pools[pool] = members
    end
  end

  local made_sources = {}
  for _, name in ipairs(common.sorted_keys(sources)) do
    local params = common.merge({}, sources[name])
    params.name = name
    local where = string.format('%s: [source.%q]', origin['source.' .. name], name)
    made_sources[name] = common.make(kumo.make_egress_source, 'kumo.make_egress_source', where, params)
  end
  local made_pools = {}
  for _, pool in ipairs(common.sorted_keys(pools)) do
    local entries = {}
    for _, member in ipairs(common.sorted_keys(pools[pool])) do
      local m = pools[pool][member]
      if not made_sources[member] then
        error(string.format('%s: [pool.%q.%q]: no [source.%q] is defined in %s', m.path, pool, member, member, table.concat(files, ', ')), 0)
      end
      table.insert(entries, { name = member, weight = m.weight })
    end
    made_pools[pool] = common.make(kumo.make_egress_pool, 'kumo.make_egress_pool', string.format('[pool.%q]', pool), { name = pool, entries = entries })
  end

  kumo.on('get_egress_source', function(name)
    local made = made_sources[name]
    if made then
      return made
    end
    error(string.format('no [source.%q] in %s', name, table.concat(files, ', ')))
  end)
  kumo.on('get_egress_pool', function(name)
    local made = made_pools[name]
    if made then
      return made
    end
    error(string.format('no [pool.%q] in %s', name, table.concat(files, ', ')))
  end)
  return { sources = made_sources, pools = made_pools }
end

return mod
