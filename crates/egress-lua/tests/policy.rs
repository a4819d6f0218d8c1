//! Policies as operators write them: the seed page's examples, errors that teach,
//! defaults, concurrency, reload, JSON-backed sources.

use egress_lua::{Policy, PolicyError, PolicyOptions};
use std::time::{Duration, Instant};

fn policy(code: &str) -> Policy {
    Policy::from_source("policy.lua", code, PolicyOptions::default())
        .unwrap_or_else(|e| panic!("{e}"))
}

// --- the seed page's examples, addresses filled in with loopback values ---

#[tokio::test]
async fn seed_name_only_source() {
    let p = policy(
        "kumo.on('get_egress_source', function(source_name)
           return kumo.make_egress_source { name = source_name }
         end)",
    );
    let src = p.egress_source("anything").await.unwrap();
    assert_eq!(src.name, "anything");
    assert_eq!(src.source_address, None);
    assert_eq!(src.ttl, Duration::from_secs(60));
}

const SEED_SOURCE_ADDRESS: &str = "
kumo.on('get_egress_source', function(source_name)
  if source_name == 'ip-1' then
    -- Make a source that will emit from 127.0.0.2
    return kumo.make_egress_source {
      name = 'ip-1',
      source_address = '127.0.0.2',
    }
  end
  error 'you need to do something for other source names'
end)";

#[tokio::test]
async fn seed_source_address_and_its_error_branch() {
    let p = policy(SEED_SOURCE_ADDRESS);
    assert_eq!(
        p.egress_source("ip-1").await.unwrap().source_address,
        Some("127.0.0.2".parse().unwrap())
    );
    let err = p.egress_source("ip-9").await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, PolicyError::Runtime { .. }), "{err:?}");
    assert!(
        text.contains("get_egress_source('ip-9') raised an error"),
        "{text}"
    );
    assert!(
        text.contains("policy.lua:10: you need to do something for other source names"),
        "{text}"
    );
    assert!(text.contains("stack traceback"), "{text}");
}

/// The page's EHLO example forgets `return`; we say so rather than fail obscurely.
#[tokio::test]
async fn seed_ehlo_example_without_return_is_explained() {
    let as_printed = "
kumo.on('get_egress_source', function(source_name)
  if source_name == 'ip-1' then
    kumo.make_egress_source {
      name = 'ip-1',
      source_address = '127.0.0.2',
      ehlo_domain = 'mta1.example.com',
    }
  end
  error 'you need to do something for other source names'
end)";
    // As printed, the example falls through to error(); with the condition's result
    // dropped, a handler that only builds the source returns nil:
    let p = policy(&as_printed.replace(
        "  error 'you need to do something for other source names'\n",
        "",
    ));
    let err = p.egress_source("ip-1").await.unwrap_err();
    assert!(matches!(err, PolicyError::ReturnedNil { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("get_egress_source('ip-1') returned nil"),
        "{text}"
    );
    assert!(
        text.contains("return kumo.make_egress_source { name = 'ip-1'"),
        "{text}"
    );
    assert!(text.contains("missing `return`"), "{text}");

    let fixed = policy(&as_printed.replace(
        "    kumo.make_egress_source {",
        "    return kumo.make_egress_source {",
    ));
    let src = fixed.egress_source("ip-1").await.unwrap();
    assert_eq!(src.ehlo_domain.as_deref(), Some("mta1.example.com"));
}

#[tokio::test]
async fn seed_ha_proxy_and_socks5_sources() {
    let p = policy(
        "kumo.on('get_egress_source', function(source_name)
           if source_name == 'ip-1' then
             return kumo.make_egress_source {
               name = 'ip-1',
               ha_proxy_source_address = '127.0.0.5',
               ha_proxy_server = '127.0.0.1:5000',
               ehlo_domain = 'mta1.example.com',
             }
           elseif source_name == 'ip-2' then
             return kumo.make_egress_source {
               name = 'ip-2',
               socks5_proxy_source_address = '127.0.0.7',
               socks5_proxy_server = '127.0.0.1:5001',
               ehlo_domain = 'mta2.example.com',
             }
           end
           error 'you need to do something for other source names'
         end)",
    );
    let ha = p.egress_source("ip-1").await.unwrap();
    assert_eq!(
        ha.ha_proxy_server.as_ref().unwrap().to_string(),
        "127.0.0.1:5000"
    );
    assert_eq!(
        ha.ha_proxy_source_address,
        Some("127.0.0.5".parse().unwrap())
    );
    let s5 = p.egress_source("ip-2").await.unwrap();
    assert_eq!(s5.socks5_proxy_server.as_ref().unwrap().port, 5001);
    assert_eq!(
        s5.socks5_proxy_source_address,
        Some("127.0.0.7".parse().unwrap())
    );
}

#[tokio::test]
async fn seed_ttl_and_spec_pool_example() {
    let p = policy(
        "local kumo = require 'kumo'
         kumo.on('get_egress_source', function(name)
           return kumo.make_egress_source { name = name, source_address = '127.0.0.2',
                                            ehlo_domain = 'mta1.example.com', ttl = '5 mins' }
         end)
         kumo.on('get_egress_pool', function(name)
           return kumo.make_egress_pool { name = name, entries = {
             { name = 'ip-1', weight = 5 }, { name = 'ip-2', weight = 2 }, { name = 'ip-3', weight = 3 } } }
         end)",
    );
    assert_eq!(
        p.egress_source("ip-1").await.unwrap().ttl,
        Duration::from_secs(300)
    );
    let pool = p.egress_pool("bulk").await.unwrap();
    let wrr = pool.selector().unwrap();
    let mut counts = std::collections::HashMap::new();
    for _ in 0..100 {
        *counts.entry(wrr.pick().clone()).or_insert(0) += 1;
    }
    assert_eq!(
        (counts["ip-1"], counts["ip-2"], counts["ip-3"]),
        (50, 20, 30)
    );
}

// --- errors that teach ---

#[tokio::test]
async fn syntax_error_names_file_and_line() {
    let err = Policy::from_source(
        "broken.lua",
        "kumo.on('init', function()\n  local x = = 1\nend)",
        PolicyOptions::default(),
    )
    .err()
    .unwrap();
    let text = err.to_string();
    assert!(matches!(err, PolicyError::Load { .. }), "{err:?}");
    assert!(text.contains("broken.lua:2:"), "{text}");
}

#[tokio::test]
async fn wrong_type_names_field_expected_and_got() {
    let p = policy(
        "kumo.on('get_egress_source', function(name)
           return kumo.make_egress_source { name = name, source_address = 10 }
         end)",
    );
    let text = p.egress_source("ip-1").await.unwrap_err().to_string();
    assert!(
        text.contains(
            "policy.lua:2: kumo.make_egress_source: source_address: expected an IP address string"
        ),
        "{text}"
    );
    assert!(text.contains("got number 10"), "{text}");
}

#[tokio::test]
async fn unknown_key_suggests_the_nearest() {
    let p = policy(
        "kumo.on('get_egress_source', function(name)
           return kumo.make_egress_source { name = name, sorce_address = '127.0.0.2' }
         end)",
    );
    let text = p.egress_source("ip-1").await.unwrap_err().to_string();
    assert!(
        text.contains(
            "unknown key `sorce_address` in egress source; did you mean `source_address`?"
        ),
        "{text}"
    );
}

#[tokio::test]
async fn validation_errors_surface_with_the_source_name() {
    let p = policy(
        "kumo.on('get_egress_source', function(name)
           return kumo.make_egress_source { name = name, socks5_proxy_source_address = '127.0.0.2' }
         end)",
    );
    let text = p.egress_source("ip-4").await.unwrap_err().to_string();
    assert!(
        text.contains(
            "egress source 'ip-4': `socks5_proxy_source_address` needs `socks5_proxy_server`"
        ),
        "{text}"
    );
}

#[tokio::test]
async fn wrong_kind_of_return_is_named() {
    let p = policy(
        "kumo.on('get_egress_source', function(name)
           return kumo.make_egress_pool { name = name }
         end)
         kumo.on('get_egress_pool', function(name) return 42 end)",
    );
    let text = p.egress_source("x").await.unwrap_err().to_string();
    assert!(
        text.contains("expected the result of kumo.make_egress_source"),
        "{text}"
    );
    let text = p.egress_pool("x").await.unwrap_err().to_string();
    assert!(text.contains("returned a number (42)"), "{text}");
}

#[tokio::test]
async fn plain_tables_are_accepted_and_validated() {
    let p = policy(
        "kumo.on('get_egress_source', function(name)
           return { name = name, source_address = '127.0.0.3' }
         end)",
    );
    assert_eq!(
        p.egress_source("t").await.unwrap().source_address,
        Some("127.0.0.3".parse().unwrap())
    );
}

// --- defaults and missing handlers ---

#[tokio::test]
async fn defaults_without_handlers() {
    let p = policy("-- an empty policy");
    let pool = p.egress_pool("unspecified").await.unwrap();
    assert_eq!(pool.entries.len(), 1);
    let src = p.egress_source("unspecified").await.unwrap();
    assert_eq!(src.source_address, None);
    let queue = p
        .queue_config("example.com", None, None, None)
        .await
        .unwrap();
    assert_eq!(queue.egress_pool, "unspecified");
    assert!(queue.mx_list().is_empty());
    let path = p
        .egress_path_config("example.com", "unspecified", None)
        .await
        .unwrap();
    assert_eq!(path.smtp_port, 25);

    let err = p.egress_source("ip-1").await.unwrap_err();
    assert!(matches!(err, PolicyError::MissingHandler { .. }));
    assert!(
        err.to_string()
            .contains("no handler for 'get_egress_source'"),
        "{err}"
    );
    assert!(
        err.to_string().contains("kumo.on('get_egress_source'"),
        "{err}"
    );
    let err = p.egress_pool("bulk").await.unwrap_err();
    assert!(
        err.to_string()
            .contains("no handler for 'get_egress_pool' (needed for pool 'bulk')"),
        "{err}"
    );
}

#[tokio::test]
async fn path_and_queue_handlers_get_their_arguments() {
    let p = policy(
        "kumo.on('get_egress_path_config', function(domain, source_name, site_name)
           return kumo.make_egress_path { ehlo_domain = source_name .. '.' .. domain, smtp_port = 2525 }
         end)
         kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
           return kumo.make_queue_config { egress_pool = 'pool-' .. (tenant or 'none'),
             protocol = { smtp = { mx_list = { '[127.0.0.1]:2526', { name = 'mx.' .. domain, addr = '127.0.0.1' } } } } }
         end)",
    );
    let path = p
        .egress_path_config("example.com", "ip-1", None)
        .await
        .unwrap();
    assert_eq!(path.ehlo_domain.as_deref(), Some("ip-1.example.com"));
    assert_eq!(path.smtp_port, 2525);
    let q = p
        .queue_config("example.com", Some("acme"), None, None)
        .await
        .unwrap();
    assert_eq!(q.egress_pool, "pool-acme");
    assert_eq!(q.mx_list()[0].port(), Some(2526));
    assert_eq!(q.mx_list()[1].name(), "mx.example.com");
}

#[tokio::test]
async fn init_declares_listeners_and_resolver() {
    let p = policy(
        "kumo.on('init', function()
           kumo.start_esmtp_listener { listen = '127.0.0.1:2600', relay_hosts = { '127.0.0.1', '10.0.0.0/8' },
                                       max_message_size = 1024 }
           kumo.start_esmtp_listener { listen = '127.0.0.1:2601', client_limit_exceptions = {} }
           kumo.start_esmtp_listener { listen = '127.0.0.1:2602', client_limit_exceptions = { '192.0.2.7' } }
           kumo.start_http_listener { listen = '127.0.0.1:8001' }
           kumo.dns.configure_resolver { name_servers = { '127.0.0.1:5353' } }
           kumo.log_info('init done', 42)
         end)",
    );
    let init = p.init();
    assert_eq!(init.esmtp_listeners.len(), 3);
    let exceptions = |i: usize| -> Vec<String> {
        init.esmtp_listeners[i]
            .client_limit_exceptions()
            .iter()
            .map(|n| n.to_string())
            .collect()
    };
    // Default: the relay_hosts; `{}`: nobody; else as written.
    assert_eq!(exceptions(0), ["127.0.0.1/32", "10.0.0.0/8"]);
    assert!(exceptions(1).is_empty());
    assert_eq!(exceptions(2), ["192.0.2.7/32"]);
    let l = &init.esmtp_listeners[0];
    assert_eq!(l.listen.to_string(), "127.0.0.1:2600");
    assert_eq!(
        l.relay_hosts
            .iter()
            .map(|n| n.to_string())
            .collect::<Vec<_>>(),
        ["127.0.0.1/32", "10.0.0.0/8"]
    );
    assert_eq!(l.max_message_size, 1024);
    assert_eq!(init.http_listeners[0].listen.port(), 8001);
    let Some(egress_lua::ResolverConfig::Hickory(resolver)) = init.resolver else {
        panic!(
            "the name server form was not recognised: {:?}",
            init.resolver
        )
    };
    assert_eq!(
        resolver.name_servers[0].socket_addr.to_string(),
        "127.0.0.1:5353"
    );

    let err = Policy::from_source(
        "p.lua",
        "kumo.on('init', function() kumo.start_esmtp_listener { lisen = '127.0.0.1:25' } end)",
        PolicyOptions::default(),
    )
    .err()
    .unwrap();
    assert!(err.to_string().contains("lisen"), "{err}");
}

// --- concurrency, caching, reload ---

/// Each call announces itself with a file, then waits (up to 3 s) for all four to
/// have announced. On a pool of four states all four meet; on a pool of one, the
/// first call waits alone and gives up — so this test can tell the difference.
fn barrier_policy(dir: &std::path::Path) -> String {
    format!(
        "local dir = '{}'
         kumo.on('get_egress_source', function(name)
           io.open(dir .. '/' .. name, 'w'):close()
           local start = os.time()
           local met = 'alone'
           while os.time() - start < 3 do
             local seen = 0
             for _, n in ipairs({{ 'a', 'b', 'c', 'd' }}) do
               local f = io.open(dir .. '/' .. n, 'r')
               if f then seen = seen + 1; f:close() end
             end
             if seen == 4 then met = 'together'; break end
           end
           return kumo.make_egress_source {{ name = name, ehlo_domain = met .. '.example' }}
         end)",
        dir.display()
    )
}

async fn meet(states: usize) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let p = std::sync::Arc::new(
        Policy::from_source(
            "barrier.lua",
            &barrier_policy(dir.path()),
            PolicyOptions {
                states,
                // One state runs the four 3 s calls one after another: the time
                // limit (which counts waiting for a state) must allow for that.
                time_limit: Duration::from_secs(30),
                ..Default::default()
            },
        )
        .unwrap(),
    );
    let calls: Vec<_> = ["a", "b", "c", "d"]
        .into_iter()
        .map(|n| {
            let p = p.clone();
            tokio::spawn(async move {
                p.egress_source(n)
                    .await
                    .unwrap()
                    .ehlo_domain
                    .clone()
                    .unwrap()
            })
        })
        .collect();
    let mut out = Vec::new();
    for c in calls {
        out.push(c.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_handlers_run_concurrently_on_separate_states() {
    assert_eq!(meet(4).await, vec!["together.example"; 4]);
    assert!(
        meet(1).await.contains(&"alone.example".to_string()),
        "one state serialises the calls"
    );
}

#[tokio::test]
async fn cached_until_reload_and_reload_keeps_old_policy_on_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policy.lua");
    let write = |addr: &str| {
        std::fs::write(
            &file,
            format!("kumo.on('get_egress_source', function(n) return kumo.make_egress_source {{ name = n, source_address = '{addr}' }} end)"),
        )
        .unwrap()
    };
    write("127.0.0.2");
    let p = Policy::from_file(&file, PolicyOptions::default()).unwrap();
    assert_eq!(
        p.egress_source("ip").await.unwrap().source_address,
        Some("127.0.0.2".parse().unwrap())
    );
    write("127.0.0.3");
    assert_eq!(
        p.egress_source("ip").await.unwrap().source_address,
        Some("127.0.0.2".parse().unwrap()),
        "cached"
    );
    assert_eq!(p.cache_stats().sources.loads, 1);
    p.reload().unwrap();
    assert_eq!(
        p.egress_source("ip").await.unwrap().source_address,
        Some("127.0.0.3".parse().unwrap()),
        "reloaded"
    );

    std::fs::write(&file, "this is not lua").unwrap();
    let err = p.reload().unwrap_err();
    assert!(err.to_string().contains("policy.lua:1:"), "{err}");
    assert_eq!(
        p.egress_source("other").await.unwrap().source_address,
        Some("127.0.0.3".parse().unwrap()),
        "old policy serves"
    );
}

#[tokio::test]
async fn json_backed_sources_refresh_after_their_ttl() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("sources.json");
    std::fs::write(&data, r#"{"ip-1": {"source_address": "127.0.0.2"}}"#).unwrap();
    let p = policy(&format!(
        "kumo.on('get_egress_source', function(name)
           local sources = kumo.serde.json_load('{}')
           local s = sources[name]
           return kumo.make_egress_source {{ name = name, source_address = s.source_address, ttl = '200ms' }}
         end)",
        data.display()
    ));
    assert_eq!(
        p.egress_source("ip-1").await.unwrap().source_address,
        Some("127.0.0.2".parse().unwrap())
    );
    std::fs::write(&data, r#"{"ip-1": {"source_address": "127.0.0.3"}}"#).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now = p
            .egress_source("ip-1")
            .await
            .unwrap()
            .source_address
            .unwrap()
            .to_string();
        if now == "127.0.0.3" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the changed file was never picked up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(p.cache_stats().sources.loads >= 2);

    let p = policy(
        "kumo.on('get_egress_source', function(n) kumo.json_load('/nonexistent/x.json') end)",
    );
    let text = p.egress_source("a").await.unwrap_err().to_string();
    assert!(
        text.contains("policy.lua:1: kumo.json_load: cannot read /nonexistent/x.json"),
        "{text}"
    );
}

/// A call that is running when the policy is reloaded finishes on the old states;
/// the next call sees the new policy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_in_flight_finish_on_the_old_states() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policy.lua");
    let (entered, go) = (dir.path().join("entered"), dir.path().join("go"));
    std::fs::write(
        &file,
        format!(
            "kumo.on('get_egress_source', function(name)
               io.open('{entered}', 'w'):close()
               local start = os.time()
               while not io.open('{go}', 'r') and os.time() - start < 10 do end
               return kumo.make_egress_source {{ name = name, ehlo_domain = 'old.example' }}
             end)",
            entered = entered.display(),
            go = go.display()
        ),
    )
    .unwrap();
    let p = std::sync::Arc::new(Policy::from_file(&file, PolicyOptions::default()).unwrap());
    let slow = {
        let p = p.clone();
        tokio::spawn(async move {
            p.egress_source("slow")
                .await
                .unwrap()
                .ehlo_domain
                .clone()
                .unwrap()
        })
    };
    while !entered.exists() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    std::fs::write(
        &file,
        "kumo.on('get_egress_source', function(name)
           return kumo.make_egress_source { name = name, ehlo_domain = 'new.example' }
         end)",
    )
    .unwrap();
    p.reload().unwrap();
    assert_eq!(
        p.egress_source("fresh")
            .await
            .unwrap()
            .ehlo_domain
            .as_deref(),
        Some("new.example")
    );
    std::fs::write(&go, "").unwrap();
    assert_eq!(slow.await.unwrap(), "old.example");
    // The old answer, finished after the reload, is not served from the cache.
    assert_eq!(
        p.egress_source("slow")
            .await
            .unwrap()
            .ehlo_domain
            .as_deref(),
        Some("new.example")
    );
}

#[tokio::test]
async fn positional_values_are_explained() {
    let p = policy(
        "kumo.on('get_egress_source', function(name) return kumo.make_egress_source { name } end)",
    );
    let text = p.egress_source("ip-1").await.unwrap_err().to_string();
    assert!(
        text.contains("an egress source is a table of named fields such as { name = ... }"),
        "{text}"
    );
}

// --- the policy time limit ---

fn limited(code: &str, states: usize, limit: Duration) -> Result<Policy, PolicyError> {
    Policy::from_source(
        "policy.lua",
        code,
        PolicyOptions {
            states,
            time_limit: limit,
            ..PolicyOptions::default()
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_looping_handler_is_interrupted_and_its_state_reused() {
    let p = limited(
        "kumo.on('get_egress_source', function(name)
           if name == 'loop' then while true do end end
           return kumo.make_egress_source { name = name }
         end)",
        1,
        Duration::from_millis(300),
    )
    .unwrap();
    for _ in 0..3 {
        let started = Instant::now();
        let err = p.egress_source("loop").await.unwrap_err();
        assert!(
            matches!(
                err,
                PolicyError::TimeLimit {
                    event: "get_egress_source",
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("300ms"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(2));
        // One state only: the interrupted one must have come back.
        assert_eq!(p.egress_source("fine").await.unwrap().name, "fine");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_for_a_busy_state_counts_toward_the_limit() {
    let p = limited(
        "kumo.on('get_egress_source', function(name)
           if name == 'loop' then while true do end end
           return kumo.make_egress_source { name = name }
         end)",
        1,
        Duration::from_millis(500),
    )
    .unwrap();
    let looping = {
        let p = std::sync::Arc::new(p);
        let q = p.clone();
        let h = tokio::spawn(async move { q.egress_source("loop").await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        // The only state is busy looping; this call waits for it, within the limit.
        let started = Instant::now();
        let r = p.egress_source("other").await;
        assert!(started.elapsed() < Duration::from_millis(1500));
        assert!(r.is_ok() || matches!(r, Err(PolicyError::TimeLimit { .. })));
        h
    };
    assert!(looping.await.unwrap().is_err());
}

#[test]
fn a_looping_top_level_or_init_fails_the_load_in_time() {
    let started = Instant::now();
    let err = limited("while true do end", 1, Duration::from_millis(200))
        .err()
        .unwrap();
    assert!(matches!(err, PolicyError::Load { .. }), "{err}");
    assert!(err.to_string().contains("time limit"), "{err}");
    let err = limited(
        "kumo.on('init', function() while true do end end)",
        1,
        Duration::from_millis(200),
    )
    .err()
    .unwrap();
    assert!(
        matches!(err, PolicyError::TimeLimit { event: "init", .. }),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn redis_throttles_are_declared_and_unknown_keys_refused() {
    let p = policy(
        "kumo.on('init', function() kumo.configure_redis_throttles { node = 'redis://127.0.0.1:6379/' } end)",
    );
    let redis = p.init().redis_throttles.unwrap();
    assert_eq!(redis.nodes(), ["redis://127.0.0.1:6379/"]);
    assert!(!redis.is_cluster());
    // KumoMTA's cluster form: a list of nodes (or cluster = true).
    let p = policy(
        "kumo.on('init', function() kumo.configure_redis_throttles { node = { 'redis://a:7000/', 'redis://b:7000/' } } end)",
    );
    assert!(p.init().redis_throttles.unwrap().is_cluster());
    let err = Policy::from_source(
        "policy.lua",
        "kumo.on('init', function() kumo.configure_redis_throttles { clustr = true, node = 'redis://x/' } end)",
        PolicyOptions::default(),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        err.contains("clustr") && err.contains("kumo.configure_redis_throttles"),
        "{err}"
    );
}

#[tokio::test]
async fn shaping_keys_reach_the_path_config_with_the_site() {
    let p = policy(
        "kumo.on('get_egress_path_config', function(domain, source, site)
           return kumo.make_egress_path { connection_limit = 'local:3', max_message_rate = '1,000/hr',
             source_selection_rate = '100/day,max_burst=1', max_deliveries_per_connection = 50,
             additional_connection_limits = { ['shared-gmail'] = 20 },
             ehlo_domain = site:gsub('[^%w.-]', 'x') }
         end)",
    );
    let path = p
        .egress_path_config(
            "gmail.com",
            "ip-1",
            Some("(alt1|alt2)?.gmail-smtp-in.l.google.com"),
        )
        .await
        .unwrap();
    assert_eq!(path.connection_limit.unwrap().to_string(), "local:3");
    assert_eq!(path.max_message_rate.unwrap().limit, 1000);
    assert_eq!(path.source_selection_rate.unwrap().burst(), 1);
    assert_eq!(path.max_deliveries_per_connection, Some(50));
    assert_eq!(path.additional_connection_limits["shared-gmail"].limit, 20);
    assert_eq!(
        path.ehlo_domain.as_deref(),
        Some("xalt1xalt2xx.gmail-smtp-in.l.google.com")
    );
    let err = Policy::from_source(
        "policy.lua",
        "kumo.on('get_egress_path_config', function() return kumo.make_egress_path { max_message_rate = '5 per min' } end)",
        PolicyOptions::default(),
    )
    .unwrap()
    .egress_path_config("d", "s", None)
    .await
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("\"5 per min\"") && err.contains("10/s"),
        "{err}"
    );
}

#[tokio::test]
async fn the_http_listener_takes_kumomtas_keys_and_defaults_to_loopback_trust() {
    let p = policy(
        "kumo.on('init', function()
           kumo.start_http_listener { listen = '127.0.0.1:8009' }
           kumo.start_http_listener { listen = '127.0.0.1:8010', trusted_hosts = { '127.0.0.1', '10.1.0.0/16' },
                                      use_tls = true, hostname = 'admin.example.com' }
         end)",
    );
    let init = p.init();
    let (plain, tls) = (&init.http_listeners[0], &init.http_listeners[1]);
    let shown = |l: &egress_lua::HttpListener| {
        l.trusted_hosts
            .iter()
            .map(|n| n.to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(shown(plain), ["127.0.0.0/8", "::1/128"]);
    assert!(!plain.use_tls);
    assert_eq!(shown(tls), ["127.0.0.1/32", "10.1.0.0/16"]);
    assert!(tls.use_tls);
    assert_eq!(tls.hostname.as_deref(), Some("admin.example.com"));

    let err = Policy::from_source(
        "p.lua",
        "kumo.on('init', function() kumo.start_http_listener { trusted_host = { '10.0.0.1' } } end)",
        PolicyOptions::default(),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("kumo.start_http_listener"), "{err}");
    assert!(err.contains("trusted_host"), "{err}");
}

#[tokio::test]
async fn http_basic_credentials_go_to_the_policy_event_and_the_password_is_never_shown() {
    let p = policy(
        "kumo.on('http_server_validate_auth_basic', function(user, password)
           if user == 'broken' then return 'yes' end
           return user == 'ops' and password == 'tiger'
         end)",
    );
    assert_eq!(p.http_auth_basic("ops", "tiger").await.unwrap(), Some(true));
    assert_eq!(
        p.http_auth_basic("ops", "wrong").await.unwrap(),
        Some(false)
    );
    assert_eq!(p.http_auth_basic("ops", "").await.unwrap(), Some(false));
    let err = p
        .http_auth_basic("broken", "s3cret")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("expected true (accept) or false"), "{err}");
    assert!(!err.contains("s3cret"), "{err}");
    let without = policy("");
    assert_eq!(without.http_auth_basic("ops", "tiger").await.unwrap(), None);
}

#[tokio::test]
async fn the_observer_hears_of_every_handler_call_with_its_time_and_outcome() {
    use std::sync::{Arc, Mutex};
    let heard: Arc<Mutex<Vec<(&'static str, bool)>>> = Arc::default();
    let sink = heard.clone();
    let options = PolicyOptions {
        observer: Some(Arc::new(move |event, took, ok| {
            assert!(took < std::time::Duration::from_secs(5));
            sink.lock().unwrap().push((event, ok));
        })),
        ..PolicyOptions::default()
    };
    let p = Policy::from_source(
        "p.lua",
        "kumo.on('get_egress_source', function(name)
           if name == 'bad' then error('no such source') end
           return kumo.make_egress_source { name = name }
         end)",
        options,
    )
    .unwrap();
    p.egress_source("ip-1").await.unwrap();
    p.egress_source("ip-1").await.unwrap(); // cached: no call
    assert!(p.egress_source("bad").await.is_err());
    let _ = p.egress_pool("default").await; // no handler: no call
    assert_eq!(
        *heard.lock().unwrap(),
        [("get_egress_source", true), ("get_egress_source", false)]
    );
}

#[tokio::test]
async fn define_spool_takes_kumomtas_shape_and_refuses_what_egressd_lacks() {
    let p = policy(
        "kumo.on('init', function()
           kumo.define_spool { name = 'data', path = '/var/spool/egressd', max_spool_bytes = 4096 }
           kumo.define_spool { name = 'meta', path = '/var/spool/egressd-meta' }
         end)",
    );
    let spool = p.init().spool.unwrap();
    assert_eq!(spool.path, "/var/spool/egressd");
    assert_eq!(spool.max_spool_bytes, 4096);
    for (code, expected) in [
        (
            "kumo.define_spool { name = 'data', path = '/x', kind = 'RocksDB' }",
            "LocalDisk",
        ),
        (
            "kumo.define_spool { name = 'other', path = '/x' }",
            "expected \"data\"",
        ),
        ("kumo.define_spool { name = 'data', paht = '/x' }", "paht"),
    ] {
        let err = Policy::from_source(
            "p.lua",
            &format!("kumo.on('init', function() {code} end)"),
            PolicyOptions::default(),
        )
        .err()
        .unwrap()
        .to_string();
        assert!(err.contains("kumo.define_spool"), "{err}");
        assert!(err.contains(expected), "{expected}: {err}");
    }
}

/// Every key of KumoMTA's make_egress_path reference, with a value of the form its
/// page documents: a KumoMTA path config loads unchanged (no "unknown key"), the
/// keys egressd honours take effect, and the secret is never shown.
#[tokio::test]
async fn every_kumomta_make_egress_path_key_is_accepted() {
    let p = policy(
        r#"kumo.on('get_egress_path_config', function(domain, source, site)
          return kumo.make_egress_path {
            additional_connection_limits = { ['shared'] = 10 },
            additional_message_rate_throttles = { ['shared'] = '100/s' },
            additional_source_selection_rates = { ['shared'] = '50/s' },
            allow_smtp_auth_plain_without_tls = false,
            allow_smtp_auth_plain_without_valid_certificate = false,
            banner_timeout = '60s', connect_timeout = '60s', connection_limit = 32,
            consecutive_connection_failures_before_delay = 100,
            data_dot_timeout = '300s', data_timeout = '300s',
            dispatcher_progress_watchdog_timeout = '5m',
            dispatcher_wakeup_strategy = 'Aggressive',
            ehlo_domain = 'mta1.example.com', ehlo_timeout = '300s',
            enable_dane = false, enable_mta_sts = true, enable_pipelining = true,
            enable_rset = true, enable_tls = 'Opportunistic', idle_timeout = '60s',
            ignore_8bit_checks = false, ip_lookup_strategy = 'Ipv4Only',
            low_memory_reduction_policy = 'ShrinkDataAndMeta',
            mail_from_timeout = '300s', maintainer_wakeup_strategy = 'Aggressive',
            max_connection_rate = '100/min', max_deliveries_per_connection = 1024,
            max_message_rate = '100/s', max_ready = 1024, max_recipients_per_batch = 50,
            no_memory_reduction_policy = 'ShrinkDataAndMeta',
            openssl_cipher_list = 'HIGH', openssl_cipher_suites = 'TLS_AES_256_GCM_SHA384',
            openssl_options = 'NO_TLSV1',
            opportunistic_tls_reconnect_on_failed_handshake = true,
            prohibited_hosts = { '127.0.0.0/8', '::1' }, rcpt_to_timeout = '300s',
            reconnect_strategy = 'ConnectNextHost', refresh_interval = '60s',
            refresh_strategy = 'Ttl', remember_broken_tls = '3 days', rset_timeout = '5s',
            rustls_cipher_suites = { 'TLS13_AES_256_GCM_SHA384' },
            skip_hosts = { '::/0' }, smtp_auth_plain_username = 'daniel',
            smtp_auth_plain_password = { key_data = 'not-for-logs' }, smtp_port = 587,
            source_selection_rate = '10/s', starttls_timeout = '5s',
            system_shutdown_timeout = '2m', tls_certificate = '/etc/tls/cert.pem',
            tls_prefer_openssl = false, tls_private_key = '/etc/tls/key.pem',
            try_next_host_on_transport_error = true, use_lmtp = false,
          }
        end)"#,
    );
    let path = p
        .egress_path_config("example.com", "ip-1", Some("mx.example.com"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(path.smtp_port, 587);
    assert_eq!(path.max_recipients_per_batch, 50);
    assert_eq!(path.skip_hosts[0].to_string(), "::/0");
    assert_eq!(
        path.ip_lookup_strategy,
        egress_source::IpLookupStrategy::Ipv4Only
    );
    assert_eq!(
        path.remember_broken_tls,
        Some(Duration::from_secs(3 * 86400))
    );
    assert!(path.try_next_host_on_transport_error);
    assert_eq!(
        path.smtp_auth_plain_password
            .as_ref()
            .unwrap()
            .load()
            .unwrap(),
        "not-for-logs"
    );
    let shown = serde_json::to_string(&*path).unwrap();
    assert!(!shown.contains("not-for-logs"), "{shown}");
}

#[tokio::test]
async fn enable_dane_needs_a_validating_resolver() {
    let with = |resolver: &str| {
        policy(&format!(
            "kumo.on('init', function()
               kumo.dns.configure_resolver {resolver}
             end)
             kumo.on('get_egress_path_config', function(domain, source, site)
               return kumo.make_egress_path {{ enable_dane = true }}
             end)"
        ))
    };
    let refused = with("{ name_servers = { '127.0.0.1:53' } }");
    let err = refused
        .egress_path_config("example.com", "ip-1", None)
        .await
        .expect_err("enable_dane on a resolver that does not validate")
        .to_string();
    assert!(
        err.contains("enable_dane = true needs a DNSSEC-validating resolver")
            && err.contains("options = { validate = true }"),
        "{err}"
    );
    let validating = with("{ name_servers = { '127.0.0.1:53' }, options = { validate = true } }");
    let path = validating
        .egress_path_config("example.com", "ip-1", None)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(path.enable_dane);
}

#[test]
fn resolver_mistakes_are_refused_where_declared() {
    for (resolver, expected) in [
        (
            "{ name_servers = { '127.0.0.1' }, options = { trust_anchor_file = '/nonexistent/anchors' } }",
            "options.trust_anchor_file /nonexistent/anchors",
        ),
        (
            "{ Test = { zones = { [[$ORIGIN x.\n@ IN MX nope\n]] } } }",
            "Test.zones[1]",
        ),
        ("{ name_servers = { '127.0.0.1' }, options = { validat = true } }", "validat"),
    ] {
        let err = Policy::from_source(
            "p.lua",
            &format!("kumo.on('init', function() kumo.dns.configure_resolver {resolver} end)"),
            PolicyOptions::default(),
        )
        .err()
        .unwrap_or_else(|| panic!("{resolver} was accepted"))
        .to_string();
        assert!(err.contains(expected), "{resolver}: {err}");
    }
}
