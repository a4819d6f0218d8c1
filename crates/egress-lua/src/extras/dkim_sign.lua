-- policy-extras.dkim_sign, written for egressd from KumoMTA's documented
-- dkim_data.toml format, so the files KumoMTA users have sign here unchanged:
--
--   local dkim_sign = require 'policy-extras.dkim_sign'
--   local signer = dkim_sign:setup { '/opt/kumomta/etc/policy/dkim_data.toml' }
--   kumo.on('smtp_server_message_received', function(msg) signer(msg) end)
--
-- [base] gives defaults (selector, headers, expiration, canonicalizations,
-- over_sign, policy, additional_signatures); [domain."D"] signs mail whose From
-- domain is D (`*.example.com` matches the names under example.com) with d=D,
-- algo "sha256" (RSA) or "ed25519", its key in `filename` or
-- /opt/kumomta/etc/dkim/D/SELECTOR.key; [signature."NAME"] blocks, listed in
-- base.additional_signatures, add a signature for their own `domain`, always
-- (policy "Always") or only when no domain block signed ("OnlyIfMissingDomainBlock").
-- Several files merge in order (a later file wins, key by key). The files are
-- read and checked at setup (a mistake fails the policy's load) and again at most
-- every 5 minutes. HashiCorp Vault keys (base.vault_mount) are not available in
-- egressd: such a file is refused at setup, saying so.
local common = require 'policy-extras.common'
local mod = {}

local DKIM_PATH = '/opt/kumomta/etc/dkim'

local BASE_KEYS = {
  vault_mount = true, vault_path_prefix = true, additional_signatures = true, policy = true,
  selector = true, expiration = true, headers = true, header_canonicalization = true,
  body_canonicalization = true, over_sign = true,
}
local DOMAIN_KEYS = {
  selector = true, headers = true, policy = true, algo = true, expiration = true,
  filename = true, header_canonicalization = true, body_canonicalization = true, over_sign = true,
}
local SIGNATURE_KEYS = {}
for k in pairs(DOMAIN_KEYS) do
  SIGNATURE_KEYS[k] = true
end
SIGNATURE_KEYS.domain = true

local function check_keys(where, t, known)
  if type(t) ~= 'table' then
    error(string.format('%s: expected a table, got %s', where, type(t)), 0)
  end
  for _, k in ipairs(common.sorted_keys(t)) do
    if not known[k] then
      error(string.format('%s: unknown key %q; expected one of %s', where, tostring(k),
        table.concat(common.sorted_keys(known), ', ')), 0)
    end
  end
end

local function load(files)
  local data = { base = {}, domain = {}, signature = {} }
  for _, file in ipairs(files) do
    local raw = type(file) == 'table' and file or common.load(file)
    local where = type(file) == 'table' and 'dkim data' or file
    for _, k in ipairs(common.sorted_keys(raw)) do
      if k ~= 'base' and k ~= 'domain' and k ~= 'signature' then
        error(string.format('%s: unknown section %q; expected base, domain or signature', where, k), 0)
      end
    end
    if raw.base then
      check_keys(where .. ': [base]', raw.base, BASE_KEYS)
      common.merge(data.base, raw.base)
    end
    for name, block in pairs(raw.domain or {}) do
      check_keys(string.format('%s: [domain.%q]', where, name), block, DOMAIN_KEYS)
      data.domain[name] = common.merge(data.domain[name] or {}, block)
    end
    for name, block in pairs(raw.signature or {}) do
      check_keys(string.format('%s: [signature.%q]', where, name), block, SIGNATURE_KEYS)
      data.signature[name] = common.merge(data.signature[name] or {}, block)
    end
  end
  if data.base.vault_mount then
    error('dkim_sign: base.vault_mount: HashiCorp Vault keys are not available in egressd; give each key as a file (filename, or ' .. DKIM_PATH .. '/DOMAIN/SELECTOR.key)', 0)
  end
  for _, name in ipairs(data.base.additional_signatures or {}) do
    local sig = data.signature[name]
    if not sig then
      error(string.format("dkim policy lists base.additional_signatures '%s' but that signature is not defined in any signature block", name), 0)
    end
    if type(sig.domain) ~= 'string' then
      error(string.format("dkim signature '%s' has no domain: give it domain = 'signing domain'", name), 0)
    end
  end
  for name, block in pairs(data.domain) do
    if not (block.selector or data.base.selector) then
      error(string.format("dkim domain '%s' is missing a selector and no default selector is defined in base", name), 0)
    end
    local policy = block.policy or data.base.policy or 'Always'
    if policy ~= 'Always' then
      error(string.format("dkim domain '%s': policy '%s': expected 'Always'", name, policy), 0)
    end
  end
  return data
end

-- The domain block for `domain`: exact, then `*.` wildcards from the most specific.
local function domain_block(data, domain)
  domain = domain:lower()
  if data.domain[domain] then
    return data.domain[domain]
  end
  local rest = domain
  while true do
    local dot = rest:find('.', 1, true)
    if not dot then
      return nil
    end
    rest = rest:sub(dot + 1)
    local block = data.domain['*.' .. rest]
    if block then
      return block
    end
  end
end

local function params_for(block, base, domain)
  local params = {
    domain = domain,
    selector = block.selector or base.selector,
    expiration = block.expiration or base.expiration,
    headers = block.headers or base.headers,
    header_canonicalization = block.header_canonicalization or base.header_canonicalization,
    body_canonicalization = block.body_canonicalization or base.body_canonicalization,
    over_sign = block.over_sign or base.over_sign,
  }
  if not params.headers then
    error(string.format("dkim signing for '%s': no headers to sign; set headers in its block or in [base]", domain), 0)
  end
  params.key = block.filename or string.format('%s/%s/%s.key', DKIM_PATH, domain, params.selector)
  local algo = block.algo or 'sha256'
  if algo == 'sha256' then
    return kumo.dkim.rsa_sha256_signer(params)
  elseif algo == 'ed25519' then
    return kumo.dkim.ed25519_signer(params)
  end
  error(string.format("invalid algo '%s' for domain '%s': expected 'sha256' or 'ed25519'", algo, domain), 0)
end

local function sign(msg, data)
  local from = msg:from_header()
  if not from then
    kumo.reject(552, '5.6.0 DKIM signing requires a From header, but it is missing from this message')
  end
  local signed_domain = false
  local block = domain_block(data, from.domain)
  if block then
    msg:dkim_sign(params_for(block, data.base, from.domain:lower()))
    signed_domain = true
  end
  for _, name in ipairs(data.base.additional_signatures or {}) do
    local sig = data.signature[name]
    local policy = sig.policy or 'Always'
    if not (policy == 'OnlyIfMissingDomainBlock' and signed_domain) then
      msg:dkim_sign(params_for(sig, data.base, sig.domain))
    end
  end
end

function mod:setup(files)
  if mod.CONFIGURED then
    error('dkim_sign module has already been configured', 2)
  end
  if type(files) ~= 'table' then
    error(string.format('dkim_sign:setup expects a list of data files, got %s', type(files)), 2)
  end
  -- Checked now, so a mistake fails the policy's load.
  load(files)
  local cached = kumo.memoize(load, { name = 'dkim_signing_data', ttl = '5 minutes', capacity = 10 })
  mod.CONFIGURED = { data_files = files }
  return function(msg)
    sign(msg, cached(files))
  end
end

return mod
