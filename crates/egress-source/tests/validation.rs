//! Every validation rule, through the public interface, with its message.

use egress_source::{EgressPathConfig, EgressPool, EgressSource, QueueConfig, ValidationError};

fn parse(json: &str) -> EgressSource {
    serde_json::from_str(json).unwrap_or_else(|e| panic!("{json}: {e}"))
}

fn parse_err(json: &str) -> String {
    serde_json::from_str::<EgressSource>(json)
        .expect_err(json)
        .to_string()
}

fn invalid(json: &str) -> (ValidationError, String) {
    let err = parse(json).validate().expect_err(json);
    let text = err.to_string();
    (err, text)
}

#[test]
fn minimal_source_is_valid_with_default_ttl() {
    let src = parse(r#"{"name":"ip-1"}"#);
    src.validate().unwrap();
    assert_eq!(src.ttl.as_secs(), 60);
}

#[test]
fn empty_name_is_refused() {
    let (err, text) = invalid(r#"{"name":""}"#);
    assert!(matches!(err, ValidationError::BadName { .. }));
    assert!(text.contains("non-empty"), "{text}");
}

#[test]
fn missing_name_is_a_parse_error() {
    assert!(parse_err(r#"{"source_address":"10.0.0.1"}"#).contains("name"));
}

#[test]
fn unknown_key_suggests_the_nearest() {
    let text = parse_err(r#"{"name":"ip-1","sorce_address":"10.0.0.1"}"#);
    assert!(
        text.contains("unknown key `sorce_address` in egress source"),
        "{text}"
    );
    assert!(text.contains("did you mean `source_address`?"), "{text}");
    let text = parse_err(r#"{"name":"ip-1","colour":"blue"}"#);
    assert!(
        text.contains("valid keys are: name, source_address"),
        "{text}"
    );
}

#[test]
fn wrong_types_name_field_expected_and_got() {
    let text = parse_err(r#"{"name":"ip-1","source_address":10}"#);
    assert!(
        text.starts_with("source_address: expected an IP address string"),
        "{text}"
    );
    assert!(text.contains("got number 10"), "{text}");
    let text = parse_err(r#"{"name":"ip-1","source_address":"10.0.0.300"}"#);
    assert!(text.contains("got string \"10.0.0.300\""), "{text}");
    let text = parse_err(r#"{"name":"ip-1","ttl":"soon"}"#);
    assert!(text.starts_with("ttl: expected a duration"), "{text}");
    let text = parse_err(r#"{"name":"ip-1","ha_proxy_server":"10.0.0.1"}"#);
    assert!(
        text.starts_with("ha_proxy_server: expected a \"host:port\""),
        "{text}"
    );
}

#[test]
fn remote_port_range() {
    for bad in ["0", "65536", "-1", "\"25\""] {
        let text = parse_err(&format!(r#"{{"name":"ip-1","remote_port":{bad}}}"#));
        assert!(
            text.starts_with("remote_port: expected a port number 1-65535"),
            "{text}"
        );
    }
    assert_eq!(
        parse(r#"{"name":"a","remote_port":65535}"#).remote_port,
        Some(65535)
    );
    let mut src = EgressSource::named("built-in-rust");
    src.remote_port = Some(0);
    let text = src.validate().unwrap_err().to_string();
    assert!(text.contains("`remote_port` is 0"), "{text}");
}

#[test]
fn ttl_forms() {
    assert_eq!(parse(r#"{"name":"a","ttl":"5 mins"}"#).ttl.as_secs(), 300);
    assert_eq!(parse(r#"{"name":"a","ttl":"90s"}"#).ttl.as_secs(), 90);
    assert_eq!(parse(r#"{"name":"a","ttl":"1h"}"#).ttl.as_secs(), 3600);
    assert_eq!(parse(r#"{"name":"a","ttl":10}"#).ttl.as_secs(), 10);
    assert_eq!(parse(r#"{"name":"a","ttl":1.5}"#).ttl.as_millis(), 1500);
}

#[test]
fn ha_proxy_pair_goes_together() {
    let (err, text) = invalid(r#"{"name":"ip-1","ha_proxy_server":"127.0.0.1:5000"}"#);
    assert_eq!(
        err,
        ValidationError::MissingPartner {
            source: "ip-1".into(),
            present: "ha_proxy_server",
            missing: "ha_proxy_source_address"
        }
    );
    assert!(text.contains("set both"), "{text}");
    let (_, text) = invalid(r#"{"name":"ip-1","ha_proxy_source_address":"10.0.0.1"}"#);
    assert!(
        text.contains("`ha_proxy_source_address` is set but `ha_proxy_server` is not"),
        "{text}"
    );
}

#[test]
fn socks5_source_needs_server() {
    let (err, text) = invalid(r#"{"name":"ip-1","socks5_proxy_source_address":"10.0.0.1"}"#);
    assert!(matches!(
        err,
        ValidationError::Socks5SourceWithoutServer { .. }
    ));
    assert!(text.contains("needs `socks5_proxy_server`"), "{text}");
}

#[test]
fn socks5_server_alone_is_standard_connect() {
    parse(r#"{"name":"ip-1","socks5_proxy_server":"localhost:1080"}"#)
        .validate()
        .unwrap();
}

#[test]
fn both_proxies_conflict() {
    let (err, text) = invalid(
        r#"{"name":"ip-1","ha_proxy_server":"127.0.0.1:5000","ha_proxy_source_address":"10.0.0.1",
            "socks5_proxy_server":"127.0.0.1:1080"}"#,
    );
    assert!(matches!(err, ValidationError::ConflictingProxies { .. }));
    assert!(text.contains("keep one"), "{text}");
}

#[test]
fn credentials_both_or_neither_and_only_with_socks5() {
    let (_, text) = invalid(
        r#"{"name":"ip-1","socks5_proxy_server":"127.0.0.1:1080","socks5_proxy_username":"u"}"#,
    );
    assert!(
        text.contains("`socks5_proxy_username` is set but `socks5_proxy_password` is not"),
        "{text}"
    );
    let (_, text) = invalid(
        r#"{"name":"ip-1","socks5_proxy_server":"127.0.0.1:1080","socks5_proxy_password":"p"}"#,
    );
    assert!(
        text.contains("`socks5_proxy_password` is set but `socks5_proxy_username` is not"),
        "{text}"
    );
    let (err, _) =
        invalid(r#"{"name":"ip-1","socks5_proxy_username":"u","socks5_proxy_password":"p"}"#);
    assert!(matches!(
        err,
        ValidationError::CredentialsWithoutSocks5 { .. }
    ));
}

#[test]
fn credentials_under_256_bytes() {
    let ok = "u".repeat(255);
    let long = "p".repeat(256);
    parse(&format!(
        r#"{{"name":"a","socks5_proxy_server":"127.0.0.1:1080","socks5_proxy_username":"{ok}","socks5_proxy_password":"{ok}"}}"#
    ))
    .validate()
    .unwrap();
    let (err, text) = invalid(&format!(
        r#"{{"name":"a","socks5_proxy_server":"127.0.0.1:1080","socks5_proxy_username":"u","socks5_proxy_password":"{long}"}}"#
    ));
    assert_eq!(
        err,
        ValidationError::CredentialTooLong {
            source: "a".into(),
            field: "socks5_proxy_password",
            len: 256
        }
    );
    assert!(text.contains("at most 255"), "{text}");
}

#[test]
fn ehlo_domain_must_be_a_name_or_literal() {
    for ok in ["mta1.example.com", "[127.0.0.1]", "[IPv6:::1]", "localhost"] {
        parse(&format!(r#"{{"name":"a","ehlo_domain":"{ok}"}}"#))
            .validate()
            .unwrap();
    }
    for bad in ["", "mta1.example.com\r\nMAIL FROM:<x>", "two words", "a..b"] {
        let src = EgressSource {
            ehlo_domain: Some(bad.into()),
            ..EgressSource::named("a")
        };
        let text = src.validate().unwrap_err().to_string();
        assert!(text.contains("`ehlo_domain`"), "{bad:?}: {text}");
    }
}

#[test]
fn source_address_family_must_match_a_literal_proxy() {
    let (err, text) =
        invalid(r#"{"name":"a","source_address":"::1","socks5_proxy_server":"127.0.0.1:1080"}"#);
    assert!(matches!(err, ValidationError::FamilyMismatch { .. }));
    assert!(
        text.contains("`source_address` (::1) and `socks5_proxy_server` (127.0.0.1)"),
        "{text}"
    );
    // A DNS name may resolve to either family; that is checked at connect time.
    parse(r#"{"name":"a","source_address":"::1","socks5_proxy_server":"localhost:1080"}"#)
        .validate()
        .unwrap();
}

#[test]
fn pool_rules() {
    let pool: EgressPool =
        serde_json::from_str(r#"{"name":"p","entries":[{"name":"a"},{"name":"a","weight":2}]}"#)
            .unwrap();
    let text = pool.validate().unwrap_err().to_string();
    assert!(text.contains("source 'a' is listed twice"), "{text}");
    let pool: EgressPool = serde_json::from_str(r#"{"name":"p","entries":[{"name":""}]}"#).unwrap();
    assert!(matches!(
        pool.validate(),
        Err(ValidationError::EmptyPoolEntry { .. })
    ));
    let err =
        serde_json::from_str::<EgressPool>(r#"{"name":"p","entries":[{"name":"a","wieght":2}]}"#)
            .unwrap_err()
            .to_string();
    assert!(
        err.contains("entries: unknown key `wieght` in egress pool entry; did you mean `weight`?"),
        "{err}"
    );
    let err =
        serde_json::from_str::<EgressPool>(r#"{"name":"p","entries":[{"name":"a","weight":-1}]}"#)
            .unwrap_err()
            .to_string();
    assert!(
        err.contains("weight: expected a whole number 0 or more"),
        "{err}"
    );
    let drained: EgressPool =
        serde_json::from_str(r#"{"name":"p","entries":[{"name":"a","weight":0}]}"#).unwrap();
    drained.validate().unwrap();
    assert!(drained
        .selector()
        .unwrap_err()
        .to_string()
        .contains("no entry with a weight above 0"));
}

#[test]
fn path_config_rules() {
    let path: EgressPathConfig = serde_json::from_str(r#"{"enable_tls":"Required"}"#).unwrap();
    assert_eq!(path.enable_tls, egress_source::Tls::Required);
    let err = serde_json::from_str::<EgressPathConfig>(r#"{"smtp_prot":25}"#)
        .unwrap_err()
        .to_string();
    assert!(err.contains("did you mean `smtp_port`?"), "{err}");
    let bad = EgressPathConfig {
        ehlo_domain: Some("a b".into()),
        ..Default::default()
    };
    assert!(bad
        .validate()
        .unwrap_err()
        .to_string()
        .contains("egress path config"));
}

#[test]
fn mx_list_forms() {
    let q: QueueConfig = serde_json::from_str(
        r#"{"protocol":{"smtp":{"mx_list":["mx.example.com","mx.example.com:2525","[10.0.0.1]",
           "[::1]:26",{"name":"mx.example.com","addr":"10.0.0.2:27"}]}}}"#,
    )
    .unwrap();
    assert_eq!(q.egress_pool, "unspecified");
    let got: Vec<(String, Option<String>, Option<u16>)> = q
        .mx_list()
        .iter()
        .map(|e| (e.name().to_owned(), e.ip().map(|i| i.to_string()), e.port()))
        .collect();
    assert_eq!(
        got,
        vec![
            ("mx.example.com".into(), None, None),
            ("mx.example.com".into(), None, Some(2525)),
            ("10.0.0.1".into(), Some("10.0.0.1".into()), None),
            ("::1".into(), Some("::1".into()), Some(26)),
            ("mx.example.com".into(), Some("10.0.0.2".into()), Some(27)),
        ]
    );
    let err = serde_json::from_str::<QueueConfig>(r#"{"protocol":{"smtp":{"mx_list":[25]}}}"#)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("protocol: smtp: mx_list: expected an mx_list entry"),
        "{err}"
    );
    assert!(err.contains("got number 25"), "{err}");
    let err = serde_json::from_str::<QueueConfig>(
        r#"{"protocol":{"smtp":{"mx_list":[{"name":"mx","adr":"10.0.0.1"}]}}}"#,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("did you mean `addr`?"), "{err}");
}
