//! KumoMTA policies run unchanged (issue: policy helpers): a three-line policy over
//! sources.toml, queues.toml and shaping.toml relays as KumoMTA would; the config
//! monitor reloads on a file change; DNS lookups and validation from a policy.

mod common;

use common::Egressd;
use egress_e2e::{by_client_addr, swaks};
use egress_e2e::{header, mx_entry, Dnsmasq, SmtpSink};
use std::process::Command;
use std::time::{Duration, Instant};

struct Setup {
    d: Egressd,
    main: SmtpSink,
    other: SmtpSink,
    dir: tempfile::TempDir,
    _dns: Dnsmasq,
}

fn sources_toml(solo: &str) -> String {
    format!(
        r#"
[source."ip-2"]
source_address = "127.0.0.2"
ehlo_domain = "mta2.example.com"

[source."ip-3"]
source_address = "127.0.0.3"
ehlo_domain = "mta3.example.com"

[pool."warm"]
[pool."warm"."ip-2"]
weight = 2
[pool."warm"."ip-3"]
weight = 1

[pool."solo"."{solo}"]
"#
    )
}

fn start() -> Setup {
    let (main, other) = (SmtpSink::start(), SmtpSink::start());
    let dns = Dnsmasq::start(&[
        "--mx-host=example.test,mx1.example.test,10",
        "--host-record=mx1.example.test,127.0.0.1",
    ]);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("sources.toml"), sources_toml("ip-3")).unwrap();
    std::fs::write(
        d.join("queues.toml"),
        format!(
            r#"
[queue.default]
egress_pool = "warm"

[queue.'other.test']
egress_pool = "solo"
routing_domain = "{}"
"#,
            mx_entry(other.addr)
        ),
    )
    .unwrap();
    std::fs::write(
        d.join("shaping.toml"),
        format!(
            r#"
["default"]
smtp_port = {}
max_deliveries_per_connection = 100
idle_timeout = "60s"

["example.test"]
max_message_rate = "1000/s"

["example.test".sources."ip-3"]
ehlo_domain = "shaped3.example.com"
"#,
            main.addr.port()
        ),
    )
    .unwrap();
    let p = |name: &str| d.join(name).display().to_string();
    let egressd = Egressd::start(&format!(
        "kumo.on('init', function()
           kumo.start_esmtp_listener {{ listen = '{{listen}}' }}
           kumo.start_http_listener {{ listen = '{{http}}' }}
           kumo.set_config_monitor_globs {{ '{dir}/*.toml' }}
         end)
         kumo.dns.configure_resolver {{ name_servers = {{ '{dns}' }} }}
         require('policy-extras.sources'):setup {{ '{sources}' }}
         require('policy-extras.queue'):setup {{ '{queues}' }}
         kumo.on('get_egress_path_config', require('policy-extras.shaping'):setup {{ '{shaping}' }})",
        dir = d.display(),
        dns = dns.addr,
        sources = p("sources.toml"),
        queues = p("queues.toml"),
        shaping = p("shaping.toml"),
    ));
    Setup {
        d: egressd,
        main,
        other,
        dir,
        _dns: dns,
    }
}

#[test]
fn a_three_line_policy_over_kumomta_files_relays_as_kumomta_would() {
    let s = start();
    for _ in 0..6 {
        let sent = swaks(s.d.addr, "x@example.test", &[]);
        assert!(sent.ok, "{}", sent.transcript);
    }
    let got = s.main.wait_for(6);
    // pool "warm": ip-2 weight 2, ip-3 weight 1.
    let counts = by_client_addr(&got);
    assert_eq!(
        counts.get("127.0.0.2"),
        Some(&4),
        "{counts:?}\n{}",
        s.d.log()
    );
    assert_eq!(counts.get("127.0.0.3"), Some(&2), "{counts:?}");
    for m in &got {
        let expected = match header(m, "X-Client-Addr") {
            // sources.toml's name, and shaping.toml's per-source override at
            // example.test's site (found by MX lookup: mx_rollup).
            Some("127.0.0.2") => "mta2.example.com",
            _ => "shaped3.example.com",
        };
        assert_eq!(header(m, "X-Helo-Args"), Some(expected), "{m}");
    }
    // queues.toml routes other.test to pool "solo" and its routing_domain.
    let sent = swaks(s.d.addr, "y@other.test", &[]);
    assert!(sent.ok, "{}", sent.transcript);
    let m = s.other.wait_for(1);
    assert_eq!(header(&m[0], "X-Client-Addr"), Some("127.0.0.3"));
    assert_eq!(header(&m[0], "X-Helo-Args"), Some("mta3.example.com"));

    // What the relay did is what resolve shows.
    let out =
        s.d.ctl(&["resolve", "example.test", "--source", "ip-3", "--json"]);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["site_name"], "mx1.example.test");
    assert_eq!(doc["sources"][0]["ehlo_domain"], "shaped3.example.com");
    assert_eq!(
        doc["sources"][0]["path_config"]["max_message_rate"],
        "1000/s"
    );
}

#[test]
fn editing_sources_toml_changes_the_next_message_without_sighup() {
    let s = start();
    let sent = swaks(s.d.addr, "y@other.test", &[]);
    assert!(sent.ok, "{}", sent.transcript);
    assert_eq!(
        header(&s.other.wait_for(1)[0], "X-Client-Addr"),
        Some("127.0.0.3")
    );
    std::fs::write(s.dir.path().join("sources.toml"), sources_toml("ip-2")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(3);
    while !s
        .d
        .log()
        .contains("policy reloaded (a monitored configuration file changed)")
    {
        assert!(Instant::now() < deadline, "no reload:\n{}", s.d.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let sent = swaks(s.d.addr, "y@other.test", &[]);
    assert!(sent.ok, "{}", sent.transcript);
    let after = by_client_addr(&s.other.wait_for(2));
    assert_eq!(after.get("127.0.0.2"), Some(&1), "{after:?}");
}

#[test]
fn check_validate_runs_validate_config_with_dns_lookups_through_the_policy_resolver() {
    let dns = Dnsmasq::start(&[
        "--mx-host=example.test,mx1.example.test,10",
        "--mx-host=example.test,mx2.example.test,20",
        "--host-record=mx1.example.test,127.0.0.1",
        // Not loopback: the resolver answers 127/8 reverse lookups itself.
        "--ptr-record=3.2.0.192.in-addr.arpa,mta3.example.com",
    ]);
    let dir = tempfile::tempdir().unwrap();
    let run = |expect: &str| {
        let policy = dir.path().join("policy.lua");
        std::fs::write(
            &policy,
            format!(
                "kumo.dns.configure_resolver {{ name_servers = {{ '{}' }} }}
                 kumo.on('validate_config', function()
                   local mx = kumo.dns.lookup_mx('example.test')
                   local ok = mx.hosts[1] == 'mx1.example.test.' and mx.by_pref[20][1] == 'mx2.example.test.'
                     and mx.site_name == '(mx1|mx2).example.test'
                     and kumo.dns.lookup_addr('mx1.example.test')[1] == '127.0.0.1'
                     and kumo.dns.lookup_ptr('192.0.2.3')[1] == 'mta3.example.com.'
                     and {expect}
                   if not ok then
                     kumo.log_error('validation: ' .. kumo.json_encode(mx))
                     kumo.validation_failed()
                   end
                 end)",
                dns.addr
            ),
        )
        .unwrap();
        Command::new(env!("CARGO_BIN_EXE_egressd"))
            .args(["check", "--validate", "--policy"])
            .arg(&policy)
            .output()
            .unwrap()
    };
    let good = run("true");
    assert!(
        good.status.success(),
        "{}",
        String::from_utf8_lossy(&good.stderr)
    );
    let bad = run("false");
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("policy validation failed"));
}

/// KumoMTA's shipped community shaping file names a provider "gmail" that has
/// rules and no match list (the default file calls it "google"). KumoMTA loads
/// it; so does egressd, saying once what it means.
#[test]
fn check_loads_a_provider_without_a_match_list_and_says_so_once() {
    let dir = tempfile::tempdir().unwrap();
    let default = dir.path().join("shaping.toml");
    std::fs::write(
        &default,
        r#"
["default"]
connection_limit = 10

[provider."google"]
match = [ {MXSuffix = ".google.com"} ]
max_deliveries_per_connection = 50

[provider."yahoo"]
match = [ {MXSuffix = ".yahoodns.net"} ]
"#,
    )
    .unwrap();
    let community = dir.path().join("community.toml");
    std::fs::write(
        &community,
        r#"
[[provider."gmail".automation]]
regex = "Our system has detected that this message"
trigger = {Threshold="5/hr"}
action = "Suspend"
duration = "1 hour"

[[provider."gmail".automation]]
regex = "Our system has detected an unusual rate"
trigger = {Threshold="2/hr"}
action = {SetConfig={name="max_message_rate", value="10/minute"}}
duration = "30m"

[[provider."yahoo".automation]]
regex = "\\[TS02\\]"
trigger = {Threshold="3/hr"}
action = {SetConfig={name="max_message_rate", value="1/minute"}}
duration = "30m"

[provider."empty"]
match = []
"#,
    )
    .unwrap();
    let policy = dir.path().join("policy.lua");
    std::fs::write(
        &policy,
        format!(
            "local shaping = require 'policy-extras.shaping'
             local shaper = shaping:setup_with_automation {{
               extra_files = {{ '{}', '{}' }},
             }}
             kumo.on('get_egress_path_config', shaper.get_egress_path_config)",
            default.display(),
            community.display()
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_egressd"))
        .args(["check", "--policy"])
        .arg(&policy)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let warning = "provider \"gmail\" has no match list, so it matches no destination (as in KumoMTA); did you mean \"google\"?";
    assert_eq!(err.matches(warning).count(), 1, "{err}");
    assert!(err.contains(&community.display().to_string()), "{err}");
    // An empty list is the same, and with no near name there is no hint.
    assert_eq!(
        err.matches("provider \"empty\" has no match list, so it matches no destination (as in KumoMTA) (first defined in")
            .count(),
        1,
        "{err}"
    );
}

/// KumoMTA's docker-swarm example policy, in its shape (written here): its docker
/// helpers replaced by constants, and its `kumo.configure_local_logs` call left
/// out (delivery records are another issue's). `egressd check` loads it, prints
/// the listener domains its file defines, and says once that `log_oob`/`log_arf`
/// have no effect.
#[test]
fn kumomtas_docker_swarm_example_loads_with_its_listener_domains() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("listener_domains.toml"),
        r#"
# The default for every domain without an entry.
["*"]
relay_to = false
log_oob = true
log_arf = true

["example.com"]
relay_to = true
"#,
    )
    .unwrap();
    std::fs::write(d.join("shaping.toml"), "# the operator's rules go here\n").unwrap();
    let policy = d.join("init.lua");
    std::fs::write(
        &policy,
        format!(
            r#"
local kumo = require 'kumo'
local listener_domains = require 'policy-extras.listener_domains'
local shaping = require 'policy-extras.shaping'

-- What the docker helpers would have found.
local DOCKER_NETWORK = '10.11.0.0/16'
local tsa_publish = {{ 'http://10.11.0.5:8008' }}

local shaper = shaping:setup_with_automation {{
  publish = tsa_publish,
  subscribe = tsa_publish,
  extra_files = {{ '{d}/shaping.toml' }},
}}

kumo.on('init', function()
  kumo.configure_redis_throttles {{ node = 'redis://redis/' }}
  kumo.start_esmtp_listener {{
    listen = '0.0.0.0:2525',
    relay_hosts = {{ '127.0.0.0/24', '::1', DOCKER_NETWORK }},
  }}
  kumo.start_http_listener {{
    listen = '0.0.0.0:8000',
    trusted_hosts = {{ '127.0.0.0/24', '::1', DOCKER_NETWORK }},
  }}
  local slot = os.getenv 'SWARM_SLOT'
  kumo.define_spool {{ name = 'data', path = string.format('{d}/data-%d', slot) }}
  kumo.define_spool {{ name = 'meta', path = string.format('{d}/meta-%d', slot) }}
  shaper.setup_publish()
end)

kumo.on(
  'get_listener_domain',
  listener_domains:setup {{ '{d}/listener_domains.toml' }}
)
"#,
            d = d.display()
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_egressd"))
        .args(["check", "--policy"])
        .arg(&policy)
        .env("SWARM_SLOT", "3")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let domains = &json["init"]["listener_domains"]["*"];
    assert_eq!(domains["example.com"]["relay_to"], true, "{json}");
    assert_eq!(domains["*"]["relay_to"], false, "{json}");
    assert_eq!(domains["*"]["log_oob"], true, "{json}");
    assert_eq!(
        json["init"]["spool"]["path"],
        format!("{}/data-3", d.display())
    );
    assert_eq!(
        err.matches("`log_oob = true` is accepted and has no effect in egressd yet")
            .count(),
        1,
        "{err}"
    );
}
