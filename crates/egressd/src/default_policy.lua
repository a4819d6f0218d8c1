-- egressd's built-in policy, used when no --policy is given.
-- Listen on loopback only and relay for loopback clients only: never an open relay.
-- With no get_egress_* handlers, mail goes through the pool 'unspecified' (one source,
-- kernel-chosen address) to the destination's MX hosts.
-- The admin API and metrics listen on loopback, trusting loopback clients only.
kumo.on('init', function()
  kumo.start_esmtp_listener {
    listen = '127.0.0.1:2525',
    relay_hosts = { '127.0.0.0/8', '::1' },
  }
  kumo.start_http_listener {
    listen = '127.0.0.1:8000',
    trusted_hosts = { '127.0.0.1', '::1' },
  }
end)
