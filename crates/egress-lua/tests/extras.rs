//! KumoMTA policies as operators have them: the built-in policy-extras helpers
//! over their documented file formats, and the utility API real policies call.

use egress_lua::{Policy, PolicyOptions};
use std::path::Path;

fn policy_in(dir: &Path, code: &str) -> Result<Policy, String> {
    let file = dir.join("policy.lua");
    std::fs::write(&file, code).unwrap();
    Policy::from_file(&file, PolicyOptions::default()).map_err(|e| e.to_string())
}

fn load_error(dir: &Path, code: &str) -> String {
    match policy_in(dir, code) {
        Ok(_) => panic!("the policy loaded:\n{code}"),
        Err(e) => e,
    }
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

const SOURCES_TOML: &str = r#"
[source."ip-1"]
source_address = "10.0.0.1"
ehlo_domain = 'mta1.examplecorp.com'

[source."ip-2"]
source_address = "10.0.0.2"
ehlo_domain = 'mta2.examplecorp.com'

[source."ip-3"]
source_address = "10.0.0.3"
ehlo_domain = 'mta3.examplecorp.com'

# Pool containing just ip-1, which has weight=1
[pool."pool-1"]
[pool."pool-1"."ip-1"]

# Pool with multiple ips
[pool."pool-2"]
[pool."pool-2"."ip-2"]
weight = 2

# We're warming up ip-3, so use it less frequently than ip-2
[pool."pool-2"."ip-3"]
weight = 1
"#;

#[tokio::test]
async fn sources_toml_as_kumomta_documents_it_defines_sources_and_pools() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "sources.toml", SOURCES_TOML);
    let p = policy_in(
        dir.path(),
        &format!("local sources = require 'policy-extras.sources'\nsources:setup {{ '{file}' }}\n"),
    )
    .unwrap();
    let ip2 = p.egress_source("ip-2").await.unwrap();
    assert_eq!(ip2.source_address.unwrap().to_string(), "10.0.0.2");
    assert_eq!(ip2.ehlo_domain.as_deref(), Some("mta2.examplecorp.com"));
    let pool = p.egress_pool("pool-2").await.unwrap();
    let weights: Vec<(&str, u32)> = pool
        .entries
        .iter()
        .map(|e| (e.name.as_str(), e.weight))
        .collect();
    assert_eq!(weights, [("ip-2", 2), ("ip-3", 1)]);
    assert_eq!(p.egress_pool("pool-1").await.unwrap().entries[0].weight, 1);
    let missing = p.egress_source("ip-9").await.unwrap_err().to_string();
    assert!(missing.contains("no [source.\"ip-9\"]"), "{missing}");

    // A later file overrides an earlier one key by key.
    let over = write(
        dir.path(),
        "override.json",
        r#"{"source": {"ip-1": {"ehlo_domain": "late.example.com"}}}"#,
    );
    let p = policy_in(
        dir.path(),
        &format!("require('policy-extras.sources'):setup {{ '{file}', '{over}' }}\n"),
    )
    .unwrap();
    let ip1 = p.egress_source("ip-1").await.unwrap();
    assert_eq!(ip1.ehlo_domain.as_deref(), Some("late.example.com"));
    assert_eq!(ip1.source_address.unwrap().to_string(), "10.0.0.1");
}

#[test]
fn broken_sources_files_are_teaching_errors_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let load = |text: &str| {
        let file = write(dir.path(), "sources.toml", text);
        load_error(
            dir.path(),
            &format!("require('policy-extras.sources'):setup {{ '{file}' }}"),
        )
    };
    let syntax = load("[source.\"ip-1\"]\nsource_address = \"10.0.0.1\n");
    assert!(
        syntax.contains("sources.toml:2:"),
        "file:line:column: {syntax}"
    );
    let unknown = load("[source.\"ip-1\"]\nsorce_address = \"10.0.0.1\"\n");
    assert!(unknown.contains("[source.\"ip-1\"]"), "{unknown}");
    assert!(unknown.contains("source_address"), "nearest key: {unknown}");
    let member = load("[source.\"ip-1\"]\n[pool.\"p\".\"ip-7\"]\n");
    assert!(
        member.contains("[pool.\"p\".\"ip-7\"]: no [source.\"ip-7\"] is defined"),
        "{member}"
    );
    let wrong_type = load("[source.\"ip-1\"]\n[pool.\"p\".\"ip-1\"]\nweight = \"heavy\"\n");
    assert!(
        wrong_type.contains("weight: expected a whole number"),
        "{wrong_type}"
    );
    let table = load("[sources.\"ip-1\"]\n");
    assert!(table.contains("unknown table [sources]"), "{table}");
}

#[tokio::test]
async fn queue_toml_routes_by_domain_tenant_and_campaign_with_documented_precedence() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "queues.toml",
        r#"
tenant_header = "X-Tenant"
default_tenant = "default-tenant"
scheduling_header = "X-Schedule"

[tenant.'default-tenant']
egress_pool = 'pool-1'

[tenant.'mytenant']
egress_pool = 'pool-2'
max_age = '10 hours'

[queue.default]
max_age = '24 hours'
retry_interval = '5 mins'

[queue.'my.own.hostname']
routing_domain = '[10.0.0.1]'

[queue.'gmail.com']
max_age = '22 hours'
retry_interval = '17 mins'
max_message_rate = '100/s'

[queue.'gmail.com'.'mytenant']
egress_pool = 'gmail-pool'

[queue.'gmail.com'.'mytenant'.'welcome']
protocol = { smtp = { mx_list = [ '[10.9.9.9]:2525' ] } }
"#,
    );
    let p = policy_in(
        dir.path(),
        &format!("local queue_module = require 'policy-extras.queue'\nlocal queue_helper = queue_module:setup {{ '{file}' }}\n"),
    )
    .unwrap();
    let q = p
        .queue_config("example.com", None, None, None)
        .await
        .unwrap();
    assert_eq!(q.egress_pool, "pool-1", "default tenant");
    assert_eq!(q.max_age.as_secs(), 24 * 3600);
    assert_eq!(q.retry_interval.as_secs(), 300);
    let q = p
        .queue_config("gmail.com", Some("mytenant"), None, None)
        .await
        .unwrap();
    assert_eq!(q.egress_pool, "gmail-pool");
    assert_eq!(
        q.max_age.as_secs(),
        10 * 3600,
        "the tenant's max_age beats the domain's"
    );
    assert_eq!(q.retry_interval.as_secs(), 17 * 60);
    let q = p
        .queue_config("gmail.com", Some("mytenant"), Some("welcome"), None)
        .await
        .unwrap();
    assert_eq!(q.mx_list()[0].to_string(), "[10.9.9.9]:2525");
    let q = p
        .queue_config("my.own.hostname", None, None, None)
        .await
        .unwrap();
    assert_eq!(q.mx_list()[0].to_string(), "[10.0.0.1]");

    let bad = write(
        dir.path(),
        "bad.toml",
        "[queue.default]\negres_pool = 'x'\n",
    );
    let err = load_error(
        dir.path(),
        &format!("require('policy-extras.queue'):setup {{ '{bad}' }}"),
    );
    assert!(
        err.contains("[queue.\"default\"]: unknown key \"egres_pool\""),
        "{err}"
    );
}

#[tokio::test]
async fn shaping_toml_merges_default_domain_and_per_source_overrides() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "shaping.toml",
        r#"
["default"]
connection_limit = 10
max_connection_rate = "100/min"
max_deliveries_per_connection = 100
max_message_rate = "100/s"
idle_timeout = "60s"
enable_tls = "Opportunistic"

["foo.com"]
mx_rollup = false
max_deliveries_per_connection = 50
connection_limit = 3

["foo.com".sources."IP-1"]
max_deliveries_per_connection = 5
"#,
    );
    let p = policy_in(
        dir.path(),
        &format!("local shaping = require 'policy-extras.shaping'\nkumo.on('get_egress_path_config', shaping:setup {{ '{file}' }})\n"),
    )
    .unwrap();
    let path = p
        .egress_path_config("foo.com", "IP-1", Some("mx.foo.com"))
        .await
        .unwrap();
    assert_eq!(path.connection_limit.unwrap().limit, 3);
    assert_eq!(path.max_deliveries_per_connection, Some(5));
    assert_eq!(path.max_connection_rate.unwrap().to_string(), "100/min");
    assert_eq!(path.max_message_rate.unwrap().to_string(), "100/s");
    let other = p
        .egress_path_config("bar.com", "IP-1", Some("mx.bar.com"))
        .await
        .unwrap();
    assert_eq!(other.max_deliveries_per_connection, Some(100));
    assert_eq!(other.connection_limit.unwrap().limit, 10);

    let bad = write(
        dir.path(),
        "bad.toml",
        "[\"default\"]\nconection_limit = 3\n",
    );
    let err = load_error(
        dir.path(),
        &format!("kumo.on('get_egress_path_config', require('policy-extras.shaping'):setup {{ '{bad}' }})"),
    );
    assert!(err.contains("bad.toml: [\"default\"]"), "{err}");
    assert!(err.contains("connection_limit"), "nearest key: {err}");
}

#[tokio::test]
async fn shaping_provider_blocks_merge_in_order_and_replace_base_resets() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "shaping.toml",
        r#"
["default"]
connection_limit = 10
max_message_rate = "100/s"
additional_connection_limits = { "everyone" = 50 }

[provider."hosted"]
match = [ {DomainSuffix = ".hosted.test"} ]
max_deliveries_per_connection = 20
additional_connection_limits = { "hosted" = 5 }

[provider."hosted".sources."ip-9"]
replace_base = true
connection_limit = 2

["shop.hosted.test"]
mx_rollup = false
max_deliveries_per_connection = 7
"#,
    );
    let p = policy_in(
        dir.path(),
        &format!("kumo.on('get_egress_path_config', require('policy-extras.shaping'):setup {{ '{file}' }})"),
    )
    .unwrap();
    let path = p
        .egress_path_config("a.hosted.test", "ip-1", None)
        .await
        .unwrap();
    assert_eq!(path.max_deliveries_per_connection, Some(20));
    assert_eq!(path.connection_limit.unwrap().limit, 10);
    // The additional_* maps merge entry by entry.
    let names: Vec<&str> = path
        .additional_connection_limits
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(names, ["everyone", "hosted"]);
    // replace_base drops everything merged before the block.
    let replaced = p
        .egress_path_config("a.hosted.test", "ip-9", None)
        .await
        .unwrap();
    assert_eq!(replaced.connection_limit.unwrap().limit, 2);
    assert_eq!(replaced.max_deliveries_per_connection, None);
    assert!(replaced.max_message_rate.is_none());
    assert!(replaced.additional_connection_limits.is_empty());
    // The domain's own block comes after the provider's.
    let own = p
        .egress_path_config("shop.hosted.test", "ip-1", None)
        .await
        .unwrap();
    assert_eq!(own.max_deliveries_per_connection, Some(7));

    for (bad, expect) in [
        (
            "[\"default\"]\nprovider_connection_limit = 3\n",
            "provider_connection_limit belongs in a [provider.\"NAME\"] block",
        ),
        (
            "[provider.\"x\"]\nmatch = [ {MXSufix = \".x.test\"} ]\n",
            "match[1]: expected one of {MXSuffix",
        ),
        (
            "[provider.\"x\"]\nmatch = \"gmail.com\"\n",
            "[provider.\"x\"]: match: expected a list",
        ),
    ] {
        let file = write(dir.path(), "bad.toml", bad);
        let err = load_error(
            dir.path(),
            &format!("kumo.on('get_egress_path_config', require('policy-extras.shaping'):setup {{ '{file}' }})"),
        );
        assert!(err.contains(expect), "{bad}: {err}");
    }
}

#[test]
fn a_helper_egressd_does_not_have_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let err = load_error(dir.path(), "require 'policy-extras.typing'");
    assert!(
        err.contains("egressd does not provide 'policy-extras.typing'"),
        "{err}"
    );
}

#[test]
fn dkim_data_mistakes_fail_the_load_with_words() {
    let dir = tempfile::tempdir().unwrap();
    let setup = |toml: &str| {
        let file = write(dir.path(), "dkim_data.toml", toml);
        load_error(
            dir.path(),
            &format!("require('policy-extras.dkim_sign'):setup {{ '{file}' }}"),
        )
    };
    let vault = setup("[base]\nvault_mount = 'secret'\nselector = 's'\n");
    assert!(vault.contains("Vault keys are not available"), "{vault}");
    let typo = setup("[domain.'example.com']\nselectr = 's'\n");
    assert!(
        typo.contains("unknown key \"selectr\"") && typo.contains("selector"),
        "{typo}"
    );
    let missing = setup("[base]\nadditional_signatures = ['esp']\n");
    assert!(
        missing.contains("'esp' but that signature is not defined"),
        "{missing}"
    );
    let no_selector = setup("[domain.'example.com']\nalgo = 'sha256'\n");
    assert!(no_selector.contains("missing a selector"), "{no_selector}");
}

#[tokio::test]
async fn the_utility_api_works_from_a_policy() {
    let dir = tempfile::tempdir().unwrap();
    let json = write(dir.path(), "d.json", r#"{"a": [1, 2], "b": {"c": "d"}}"#);
    let toml = write(dir.path(), "d.toml", "a = [1, 2]\n[b]\nc = 'd'\n");
    let yaml = write(dir.path(), "d.yaml", "a: [1, 2]\nb:\n  c: d\n");
    let calls = dir.path().join("calls");
    let p = policy_in(
        dir.path(),
        &format!(
            r#"
local function same(x) return x.a[2] == 2 and x.b.c == 'd' end
assert(same(kumo.serde.json_load('{json}')), 'json_load')
assert(same(kumo.json_load('{json}')), 'kumo.json_load')
assert(same(kumo.serde.toml_load('{toml}')), 'toml_load')
assert(same(kumo.toml_load('{toml}')), 'kumo.toml_load')
assert(same(kumo.serde.yaml_load('{yaml}')), 'yaml_load')
assert(same(kumo.serde.yaml_parse('a: [1, 2]\nb: {{c: d}}')), 'yaml_parse')
assert(same(kumo.serde.json_parse(kumo.serde.json_encode({{a = {{1, 2}}, b = {{c = 'd'}}}}))), 'json round trip')
assert(kumo.json_encode_pretty({{x = 1}}):find('\n'), 'pretty json')
assert(same(kumo.serde.toml_parse(kumo.serde.toml_encode({{a = {{1, 2}}, b = {{c = 'd'}}}}))), 'toml round trip')
assert(kumo.toml_encode_pretty({{x = 1}}) == 'x = 1\n', kumo.toml_encode_pretty({{x = 1}}))
assert(kumo.toml_parse('a = 1').a == 1)

local re = kumo.regex.compile('^(?P<local>[^@]+)@(?P<domain>.+)$')
assert(re:is_match('u@example.com'))
assert(re:captures('u@example.com').domain == 'example.com')
assert(re:captures('u@example.com')[1] == 'u')
assert(kumo.regex.compile('o'):replace_all('foo', '0') == 'f00')
assert(#kumo.regex.compile([[,\s*]]):split('a, b,c') == 3)
assert(kumo.regex.escape('a.b*c') == 'a\\.b\\*c')

local frames = kumo.traceback(1)
assert(frames[1].source and frames[1].line > 0, 'traceback has frames')
assert(frames[1].short_src and frames[1].curr_line == frames[1].line, 'KumoMTA frame fields')
assert(frames[1].what and frames[1].line_defined ~= nil and frames[1].is_tail_call ~= nil, 'KumoMTA frame fields')

local started = os.clock()
kumo.sleep(0.01)

local order = {{}}
kumo.on('pre_init', function() table.insert(order, 'pre_init 1') end)
kumo.on('pre_init', function() table.insert(order, 'pre_init 2') end)
kumo.on('init', function()
  table.insert(order, 'init')
  assert(table.concat(order, ',') == 'pre_init 1,pre_init 2,init', table.concat(order, ','))
end)

local expensive = kumo.memoize(function(user)
  local f = io.open('{calls}', 'a'); f:write(user, '\n'); f:close()
  return user == 'ops'
end, {{ name = 'auth', ttl = '5 minutes', capacity = 10 }})
kumo.on('smtp_server_auth_plain', function(authz, authc, password)
  return expensive(authc)
end)
"#,
            calls = calls.display()
        ),
    )
    .unwrap();
    for _ in 0..5 {
        assert_eq!(p.auth_plain("", "ops", "x", &[]).await.unwrap(), Some(true));
        assert_eq!(
            p.auth_plain("", "eve", "x", &[]).await.unwrap(),
            Some(false)
        );
    }
    let calls = std::fs::read_to_string(&calls).unwrap();
    assert_eq!(
        calls, "ops\neve\n",
        "each distinct call computed once, across states"
    );
}

#[test]
fn anything_else_a_policy_calls_is_named_in_the_error() {
    let dir = tempfile::tempdir().unwrap();
    for (code, name) in [
        (
            "kumo.start_http_listener_v2 {}",
            "kumo.start_http_listener_v2",
        ),
        ("kumo.dns.rbl_lookup('x')", "kumo.dns.rbl_lookup"),
        ("kumo.serde.xml_parse('x')", "kumo.serde.xml_parse"),
        // A whole namespace egressd lacks names the function called under it.
        ("kumo.http.build_client {}", "kumo.http.build_client"),
        // And a function missing from a namespace it has.
        ("kumo.dkim.arc_seal {}", "kumo.dkim.arc_seal"),
    ] {
        let err = load_error(dir.path(), code);
        assert!(
            err.contains(&format!("{name} is not provided by egressd")),
            "{err}"
        );
    }
}

#[tokio::test]
async fn validate_config_reports_what_the_policy_found_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let ok = policy_in(dir.path(), "kumo.on('validate_config', function() end)").unwrap();
    assert!(ok.validate().await.unwrap());
    let bad = policy_in(
        dir.path(),
        "kumo.on('validate_config', function() kumo.log_error('pool main is empty'); kumo.validation_failed() end)",
    )
    .unwrap();
    assert!(!bad.validate().await.unwrap());
    let top = policy_in(dir.path(), "kumo.validation_failed()").unwrap();
    assert!(!top.validate().await.unwrap());
    // Every registered handler runs (KumoMTA's helpers each register one), not
    // only the last: the first one's failure counts.
    let many = policy_in(
        dir.path(),
        "kumo.on('validate_config', function() kumo.validation_failed() end)
         kumo.on('validate_config', function() end)",
    )
    .unwrap();
    assert!(!many.validate().await.unwrap());
}

/// policy-extras.listener_domains in KumoMTA's documented format: the answer for
/// a domain on a listener, `relay_from_authz` through `conn_meta:get_meta`, and
/// the mistakes that fail the load.
#[tokio::test]
async fn listener_domains_answer_per_listener_and_per_authenticated_session() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "listener_domains.toml",
        r#"
["*"]
relay_to = true

["somewhere.com"]
relay_to = false
relay_from = ['10.0.0.0/24']

["elsewhere.com"]
relay_to = false
relay_from_authz = ["john"]

[listener."127.0.0.1:25"."*.example.com"]
log_oob = false
"#,
    );
    let p = policy_in(
        dir.path(),
        &format!(
            "kumo.on('get_listener_domain', require('policy-extras.listener_domains'):setup {{ '{file}' }})"
        ),
    )
    .unwrap();
    let ask = |domain: &'static str, listener: &'static str, meta: Vec<(&'static str, String)>| {
        let p = &p;
        async move { p.listener_domain(domain, listener, &meta).await.unwrap() }
    };
    // The "*" default.
    let d = ask("example.com", "127.0.0.1:25", vec![]).await.unwrap();
    assert!(d.relay_to);
    // The listener's own wildcard entry, whole (relay_to is its default, false).
    let d = ask("woof.example.com", "127.0.0.1:25", vec![])
        .await
        .unwrap();
    assert!(!d.relay_to && !d.log_oob);
    // On another listener, the same name falls to the "*" default.
    assert!(
        ask("woof.example.com", "10.0.0.1:25", vec![])
            .await
            .unwrap()
            .relay_to
    );
    let d = ask("somewhere.com", "127.0.0.1:25", vec![]).await.unwrap();
    assert!(!d.relay_to && d.relays_from("10.0.0.9".parse().unwrap()));
    // relay_from_authz: a session authenticated as john relays from its address.
    let d = ask("elsewhere.com", "10.0.0.1:25", vec![]).await.unwrap();
    assert!(d.relay_from.is_empty());
    let john = vec![
        ("authz_id", "john".to_owned()),
        ("received_from", "192.0.2.7:50123".to_owned()),
    ];
    let d = ask("elsewhere.com", "10.0.0.1:25", john).await.unwrap();
    assert!(d.relays_from("192.0.2.7".parse().unwrap()), "{d:?}");
    assert!(!d.relays_from("192.0.2.8".parse().unwrap()));
    let mary = vec![
        ("authz_id", "mary".to_owned()),
        ("received_from", "[2001:db8::7]:50123".to_owned()),
    ];
    assert!(ask("elsewhere.com", "10.0.0.1:25", mary)
        .await
        .unwrap()
        .relay_from
        .is_empty());

    // A policy without the handler says nothing; one whose handler returns nil too.
    let none = policy_in(dir.path(), "").unwrap();
    assert_eq!(none.listener_domain("a.com", "x", &[]).await.unwrap(), None);
    let nil = policy_in(
        dir.path(),
        "kumo.on('get_listener_domain', function(domain, listener, conn_meta)
           if conn_meta:get_meta('authz_id') then return kumo.make_listener_domain { relay_to = true } end
         end)",
    )
    .unwrap();
    assert_eq!(nil.listener_domain("a.com", "x", &[]).await.unwrap(), None);
    let meta = [("authz_id", "daniel".to_owned())];
    assert!(
        nil.listener_domain("a.com", "x", &meta)
            .await
            .unwrap()
            .unwrap()
            .relay_to
    );

    for (bad, expect) in [
        ("[\"a.com\"]\nrelay_too = true\n", "relay_too"),
        ("[\"a.com\"]\nlog_arf = \"yes\"\n", "log_arf"),
        ("[\"a.com\"]\nrelay_from = ['10.0.0.0/33']\n", "10.0.0.0/33"),
        (
            "[\"a.com\"]\nrelay_from_authz = \"john\"\n",
            "relay_from_authz",
        ),
    ] {
        let file = write(dir.path(), "bad.toml", bad);
        let err = load_error(
            dir.path(),
            &format!("kumo.on('get_listener_domain', require('policy-extras.listener_domains'):setup {{ '{file}' }})"),
        );
        assert!(
            err.contains(expect) && err.contains("bad.toml"),
            "{bad}: {err}"
        );
    }
}
