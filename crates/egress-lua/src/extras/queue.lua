-- policy-extras.queue, written for egressd from KumoMTA's documented queues.toml
-- format. egressd implements the part that decides routing and retries:
-- `egress_pool`, `routing_domain`, `protocol.smtp.mx_list`, `retry_interval`,
-- `max_retry_interval`, `max_age`, in `[queue.default]`, `[queue.'DOMAIN']`,
-- `[queue.'DOMAIN'.'TENANT']`, `[queue.'DOMAIN'.'TENANT'.'CAMPAIGN']`,
-- `[tenant.'T']` and `[campaign.'C']`, merged from least to most specific:
--   queue.default < queue.DOMAIN < tenant.T < campaign.C
--     < queue.DOMAIN.TENANT < queue.DOMAIN.TENANT.CAMPAIGN
-- (a domain's base settings yield to the tenant's, as KumoMTA's guide says).
-- The tenant is what egressd knows at the first RCPT: the AUTH identity, else
-- `default_tenant`; there is no campaign (no header exists yet).
-- KumoMTA keys that shape queues egressd does not have (rates, header handling)
-- are accepted and ignored, with a warning once.
local common = require 'policy-extras.common'

local mod = {}

local ROUTING = {
  egress_pool = true,
  routing_domain = true,
  protocol = true,
  retry_interval = true,
  max_retry_interval = true,
  max_age = true,
}
local IGNORED = {
  max_message_rate = true,
  overall_max_message_rate = true,
  provider_max_message_rate = true,
  reap_interval = true,
  refresh_interval = true,
  refresh_strategy = true,
  strategy = true,
  timerwheel_tick_interval = true,
  shrink_policy = true,
  require_authz = true,
}
local TOP = {
  queue = true,
  tenant = true,
  campaign = true,
  default_tenant = true,
  tenant_header = true,
  remove_tenant_header = true,
  campaign_header = true,
  remove_campaign_header = true,
  scheduling_header = true,
}

-- The queue-config keys of one section; nested tables under a [queue.'DOMAIN']
-- (other than `protocol`) are tenant sections, returned apart.
local function settings(section, where, nested_ok)
  local out, nested = {}, {}
  for _, k in ipairs(common.sorted_keys(section)) do
    local v = section[k]
    if ROUTING[k] then
      out[k] = v
    elseif IGNORED[k] then
      common.ignored(where, k, 'scheduled-queue setting')
    elseif nested_ok and type(v) == 'table' then
      nested[k] = v
    else
      error(string.format('%s: unknown key %q; expected one of egress_pool, routing_domain, protocol, retry_interval, max_retry_interval, max_age', where, k), 0)
    end
  end
  return out, nested
end

-- routing_domain: an address literal routes there; a name is used as the one host
-- to connect to (KumoMTA would look up its MX; egressd takes it as a host).
local function apply_routing_domain(params)
  local rd = params.routing_domain
  params.routing_domain = nil
  if rd then
    params.protocol = params.protocol or {}
    params.protocol.smtp = params.protocol.smtp or {}
    params.protocol.smtp.mx_list = { rd }
  end
  return params
end

function mod:setup(files)
  local cfg = { queue = {}, tenant = {}, campaign = {} }
  for _, path in ipairs(files) do
    local data = common.load(path)
    for _, key in ipairs(common.sorted_keys(data)) do
      if not TOP[key] then
        error(string.format('%s: unknown key %q; expected [queue.*], [tenant.*], [campaign.*] or default_tenant', path, key), 0)
      end
    end
    cfg.default_tenant = data.default_tenant or cfg.default_tenant
    for _, kind in ipairs { 'queue', 'tenant', 'campaign' } do
      for _, name in ipairs(common.sorted_keys(data[kind] or {})) do
        local where = string.format('%s: [%s.%q]', path, kind, name)
        local own, nested = settings(data[kind][name], where, kind == 'queue' and name ~= 'default')
        local entry = cfg[kind][name] or { own = {}, tenants = {} }
        common.merge(entry.own, own)
        for _, t in ipairs(common.sorted_keys(nested)) do
          local twhere = string.format('%s: [queue.%q.%q]', path, name, t)
          local town, campaigns = settings(nested[t], twhere, true)
          local tentry = entry.tenants[t] or { own = {}, campaigns = {} }
          common.merge(tentry.own, town)
          for _, c in ipairs(common.sorted_keys(campaigns)) do
            local cwhere = string.format('%s: [queue.%q.%q.%q]', path, name, t, c)
            tentry.campaigns[c] = common.merge(tentry.campaigns[c] or {}, (settings(campaigns[c], cwhere, false)))
          end
          entry.tenants[t] = tentry
        end
        cfg[kind][name] = entry
      end
    end
  end

  local function resolve(domain, tenant, campaign)
    tenant = tenant or cfg.default_tenant
    local params = {}
    local function layer(entry)
      if entry then
        common.merge(params, entry)
      end
    end
    layer(cfg.queue.default and cfg.queue.default.own)
    local dq = cfg.queue[domain]
    layer(dq and dq.own)
    layer(tenant and cfg.tenant[tenant] and cfg.tenant[tenant].own)
    layer(campaign and cfg.campaign[campaign] and cfg.campaign[campaign].own)
    local tq = dq and tenant and dq.tenants[tenant]
    layer(tq and tq.own)
    layer(tq and campaign and tq.campaigns[campaign])
    return apply_routing_domain(params)
  end

  -- Every section is checked now: a bad value fails the load, not a message.
  for _, kind in ipairs { 'queue', 'tenant', 'campaign' } do
    for _, name in ipairs(common.sorted_keys(cfg[kind])) do
      local params = apply_routing_domain(common.merge({}, cfg[kind][name].own))
      common.make(kumo.make_queue_config, 'kumo.make_queue_config', string.format('[%s.%q]', kind, name), params)
    end
  end

  kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
    return kumo.make_queue_config(resolve(domain, tenant, campaign))
  end)
  -- KumoMTA's helper applies tenant and campaign headers to messages; egressd
  -- routes at the first RCPT, before any header, so there is nothing to apply.
  return {
    apply = function(self, msg) end,
    resolve = function(self, domain, tenant, campaign)
      return resolve(domain, tenant, campaign)
    end,
  }
end

return mod
