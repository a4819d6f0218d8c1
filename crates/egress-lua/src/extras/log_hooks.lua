-- policy-extras.log_hooks: KumoMTA's helper for sending log records to a
-- webhook, written here from its documented interface. `new_json` declares a
-- log hook (kumo.configure_log_hook) whose records egressd POSTs itself, from a
-- durable backlog, to `url`; `queue_config`'s retry_interval and
-- max_retry_interval set the back-off. KumoMTA delivers hook records through a
-- custom_lua queue; egressd has no custom_lua deliveries, so `new` (a
-- constructor of your own) and disposition hooks are refused with a clear word.
local common = require 'policy-extras.common'
local mod = { CONFIGURED = {} }

local JSON_OPTIONS = {
  name = true,
  url = true,
  log_parameters = true,
  queue_config = true,
  batch_size = true,
  min_batch_size = true,
  max_batch_latency = true,
  filter = true,
}

local function fail(text)
  error('policy-extras.log_hooks: ' .. text, 3)
end

function mod:new_json(options)
  if type(options) ~= 'table' then
    fail(string.format('new_json expects a table of options, got %s', type(options)))
  end
  for _, key in ipairs(common.sorted_keys(options)) do
    if not JSON_OPTIONS[key] then
      local known = common.sorted_keys(JSON_OPTIONS)
      fail(string.format('new_json: unknown option %q; expected one of %s', tostring(key), table.concat(known, ', ')))
    end
  end
  local name, url = options.name, options.url
  if type(name) ~= 'string' or name == '' then
    fail('new_json: name: expected a string naming the hook')
  end
  if type(url) ~= 'string' then
    fail(string.format('new_json { name = %q }: url: expected the URL to POST to', name))
  end
  if mod.CONFIGURED[name] then
    fail(string.format("log_hook with name '%s' has already been configured", name))
  end
  mod.CONFIGURED[name] = true

  local webhook = {
    url = url,
    batch_size = options.batch_size,
    min_batch_size = options.min_batch_size,
    max_batch_latency = options.max_batch_latency,
    retry_interval = '1m',
    max_retry_interval = '20m',
  }
  for _, key in ipairs(common.sorted_keys(options.queue_config or {})) do
    local value = options.queue_config[key]
    if key == 'retry_interval' or key == 'max_retry_interval' then
      webhook[key] = value
    else
      common.ignored(string.format('log_hooks:new_json { name = %q } queue_config', name), key,
        'queue setting for log hooks (records wait in their backlog until the endpoint takes them)')
    end
  end

  kumo.on('pre_init', function()
    local params = { name = name }
    common.merge(params, options.log_parameters or {})
    params.webhook = webhook
    kumo.configure_log_hook(params)
  end)

  -- Without a filter there is nothing to decide: egressd never makes records of
  -- its own hook deliveries (KumoMTA's loop guard), so every record goes.
  local filter = options.filter
  if filter then
    kumo.on('should_enqueue_log_record', function(msg, hook_name)
      if hook_name ~= name then
        return nil
      end
      local record = msg:get_meta 'log_record'
      if record.reception_protocol == 'LogRecord' then
        return false
      end
      if filter(msg, hook_name) then
        return false
      end
      msg:set_meta('queue', name .. '.log_hook')
      return true
    end)
  end
end

function mod:new(options)
  fail('new: egressd POSTs log records itself and runs no custom_lua constructor; use log_hooks:new_json { name, url, ... }')
end

function mod:new_disposition_hook(options)
  fail('new_disposition_hook: disposition hooks are not available in egressd; use log_hooks:new_json { name, url, ... }')
end

return mod
