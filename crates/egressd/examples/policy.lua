-- An egressd policy: direct, HAProxy and SOCKS5 sources, two weighted pools, and
-- per-domain routing. Every function here is KumoMTA's, with KumoMTA's arguments.
local kumo = require 'kumo'

kumo.on('init', function()
  kumo.start_esmtp_listener {
    listen = '127.0.0.1:2525',
    relay_hosts = { '127.0.0.0/8', '::1' }, -- who may relay without AUTH: loopback only
    max_message_size = 20 * 1024 * 1024,
    -- STARTTLS is always offered; without these two, with a self-signed certificate.
    -- tls_certificate = '/etc/egressd/tls/cert.pem',
    -- tls_private_key = '/etc/egressd/tls/key.pem',
  }
end)

-- Other machines and applications may relay after STARTTLS and AUTH PLAIN/LOGIN.
-- Keep real credentials out of the policy file (kumo.serde.json_load a secrets file).
local USERS = { app1 = 'change-me' }
kumo.on('smtp_server_auth_plain', function(authz, authc, password, conn_meta)
  return USERS[authc] ~= nil and USERS[authc] == password
end)

-- The outbound identities. In production these would come from a file or a
-- database (kumo.serde.json_load), refreshed after each source's ttl.
local SOURCES = {
  ['direct-1'] = { source_address = '127.0.0.2', ehlo_domain = 'mta1.example.com' },
  ['direct-2'] = { source_address = '127.0.0.3', ehlo_domain = 'mta2.example.com' },
  -- An HAProxy on another host owns 127.0.0.5 and sends from it (PROXY v2).
  ['via-haproxy'] = {
    ha_proxy_server = '127.0.0.1:5000',
    ha_proxy_source_address = '127.0.0.5',
    ehlo_domain = 'mta5.example.com',
  },
  -- A SOCKS5 proxy (dante, microsocks) that picks its own egress address.
  ['via-socks'] = { socks5_proxy_server = '127.0.0.1:1080', ehlo_domain = 'mta9.example.com' },
}

kumo.on('get_egress_source', function(name)
  local fields = SOURCES[name]
  if not fields then
    error('no egress source called ' .. name)
  end
  local params = { name = name, ttl = '5 mins' }
  for k, v in pairs(fields) do
    params[k] = v
  end
  return kumo.make_egress_source(params)
end)

kumo.on('get_egress_pool', function(name)
  if name == 'transactional' then
    -- three of every four messages from direct-1, one from direct-2
    return kumo.make_egress_pool {
      name = name,
      entries = { { name = 'direct-1', weight = 3 }, { name = 'direct-2', weight = 1 } },
    }
  end
  return kumo.make_egress_pool {
    name = name,
    entries = { { name = 'via-haproxy' }, { name = 'via-socks' } },
  }
end)

kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  if domain == 'example.net' then
    -- this domain goes to a fixed smarthost instead of its MX hosts
    return kumo.make_queue_config {
      egress_pool = 'transactional',
      protocol = { smtp = { mx_list = { 'smarthost.example.net:587' } } },
    }
  end
  return kumo.make_queue_config { egress_pool = 'bulk' }
end)

kumo.on('get_egress_path_config', function(domain, source_name, site_name)
  if domain == 'example.net' then
    -- our own smarthost: TLS or nothing
    return kumo.make_egress_path { connect_timeout = '30s', enable_tls = 'Required' }
  end
  -- STARTTLS whenever offered, certificate checked against the system trust store
  return kumo.make_egress_path { connect_timeout = '30s', enable_tls = 'Opportunistic' }
end)
