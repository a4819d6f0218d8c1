//! egress-connect against real peers on loopback: smtp-sink records the address each
//! connection came from, through haproxy, microsocks and danted.

use egress_connect::{connect, ConnectError, Connection, Connector, Phase, StaticResolver, Via};
use egress_e2e::{
    deliver_through, header, Danted, HaProxy, MicroSocks, SmtpSink, SourceBindingSocks,
};
use egress_source::EgressSource;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(5);

fn source(json: serde_json::Value) -> EgressSource {
    let src: EgressSource = serde_json::from_value(json).unwrap();
    src.validate().unwrap();
    src
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Pushes a message through the connection and returns what the sink recorded.
/// Each test uses a distinct EHLO name per delivery, so it identifies the message;
/// the peers are processes of their own, so blocking here is fine.
async fn deliver(conn: Connection, sink: &SmtpSink, ehlo: &str) -> String {
    deliver_through(conn.stream.into_std().unwrap(), sink, ehlo)
}

#[tokio::test]
async fn direct_from_chosen_loopback_addresses() {
    let sink = SmtpSink::start();
    for (addr, ehlo) in [
        ("127.0.0.2", "mta2.example.test"),
        ("127.0.0.3", "mta3.example.test"),
    ] {
        let src = source(serde_json::json!({ "name": addr, "source_address": addr }));
        let conn = connect(&src, sink.addr, TIMEOUT).await.unwrap();
        assert_eq!(conn.egress.ip, Some(ip(addr)));
        assert_eq!(conn.egress.via, Via::Direct);
        let recorded = deliver(conn, &sink, ehlo).await;
        assert_eq!(header(&recorded, "X-Client-Addr"), Some(addr), "{recorded}");
        assert_eq!(header(&recorded, "X-Helo-Args"), Some(ehlo));
    }
}

#[tokio::test]
async fn direct_ipv6_from_loopback() {
    let sink = SmtpSink::start_with(ip("::1"), &[]);
    let src = source(serde_json::json!({ "name": "v6", "source_address": "::1" }));
    let conn = connect(&src, sink.addr, TIMEOUT).await.unwrap();
    assert_eq!(conn.egress.ip, Some(ip("::1")));
    let recorded = deliver(conn, &sink, "v6.example.test").await;
    // smtp-sink writes IPv6 clients with Postfix's `ipv6:` prefix.
    assert_eq!(
        header(&recorded, "X-Client-Addr"),
        Some("ipv6:::1"),
        "{recorded}"
    );
}

#[tokio::test]
async fn unplumbed_address_is_a_bind_error_and_nothing_is_sent() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let src = source(serde_json::json!({ "name": "doc-net", "source_address": "192.0.2.1" }));
    let err = connect(&src, listener.local_addr().unwrap(), TIMEOUT)
        .await
        .unwrap_err();
    assert!(err.is_unplumbed(), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("egress source 'doc-net'") && text.contains("192.0.2.1"),
        "{text}"
    );
    assert!(text.contains("not configured on any interface"), "{text}");
    assert_eq!(
        listener.accept().unwrap_err().kind(),
        std::io::ErrorKind::WouldBlock,
        "no connection attempt reached the destination"
    );
}

#[tokio::test]
async fn haproxy_sends_from_the_header_source_address() {
    let sink = SmtpSink::start();
    let haproxy = HaProxy::start();
    let src = source(serde_json::json!({
        "name": "ha-5", "ha_proxy_server": haproxy.addr.to_string(), "ha_proxy_source_address": "127.0.0.5",
    }));
    let conn = connect(&src, sink.addr, TIMEOUT).await.unwrap();
    assert_eq!(conn.egress.ip, Some(ip("127.0.0.5")));
    assert_eq!(conn.egress.via, Via::HaProxy(haproxy.addr));
    let recorded = deliver(conn, &sink, "ha5.example.test").await;
    assert_eq!(
        header(&recorded, "X-Client-Addr"),
        Some("127.0.0.5"),
        "{recorded}"
    );
}

/// A plain listener stands where HAProxy would and decodes the header with ppp.
async fn decoded_proxy_header(
    listen: &str,
    ha_source: &str,
    destination: SocketAddr,
) -> ppp::v2::Addresses {
    let listener = tokio::net::TcpListener::bind(listen).await.unwrap();
    let src = source(serde_json::json!({
        "name": "ha", "ha_proxy_server": listener.local_addr().unwrap().to_string(), "ha_proxy_source_address": ha_source,
    }));
    let accept = tokio::spawn(async move {
        use tokio::io::AsyncReadExt;
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = vec![0u8; 256];
        let mut n = 0;
        loop {
            n += s.read(&mut buf[n..]).await.unwrap();
            if let Ok(header) = ppp::v2::Header::try_from(&buf[..n]) {
                return header.addresses;
            }
        }
    });
    let _conn = connect(&src, destination, TIMEOUT).await.unwrap();
    accept.await.unwrap()
}

#[tokio::test]
async fn proxy_v2_header_carries_source_and_destination() {
    let v4 = decoded_proxy_header(
        "127.0.0.1:0",
        "127.0.0.5",
        "127.0.0.25:2525".parse().unwrap(),
    )
    .await;
    assert_eq!(
        v4,
        ppp::v2::IPv4::new([127, 0, 0, 5], [127, 0, 0, 25], 0, 2525).into()
    );
    let v6 = decoded_proxy_header(
        "[::1]:0",
        "2001:db8::5",
        "[2001:db8::25]:25".parse().unwrap(),
    )
    .await;
    assert_eq!(
        v6,
        ppp::v2::IPv6::new(ip6("2001:db8::5"), ip6("2001:db8::25"), 0, 25).into()
    );
}

fn ip6(s: &str) -> std::net::Ipv6Addr {
    s.parse().unwrap()
}

#[tokio::test]
async fn haproxy_family_mismatch_fails_before_connecting() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let src = source(serde_json::json!({
        "name": "ha-v4", "ha_proxy_server": listener.local_addr().unwrap().to_string(), "ha_proxy_source_address": "127.0.0.5",
    }));
    let err = connect(&src, "[::1]:25".parse().unwrap(), TIMEOUT)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ConnectError::FamilyMismatch { .. }),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains("`ha_proxy_source_address` 127.0.0.5 and the destination [::1]:25"),
        "{err}"
    );
    assert_eq!(
        listener.accept().unwrap_err().kind(),
        std::io::ErrorKind::WouldBlock,
        "proxy was not contacted"
    );
}

#[tokio::test]
async fn socks5_microsocks_sends_from_its_bind_address() {
    let sink = SmtpSink::start();
    let socks = MicroSocks::start(Some(ip("127.0.0.9")), None);
    let src = source(
        serde_json::json!({ "name": "socks-9", "socks5_proxy_server": socks.addr.to_string() }),
    );
    let conn = connect(&src, sink.addr, TIMEOUT).await.unwrap();
    assert_eq!(conn.egress.via, Via::Socks5(socks.addr));
    assert_ne!(
        conn.egress.ip,
        Some(ip("0.0.0.0")),
        "an unspecified bound address is reported as unknown"
    );
    let recorded = deliver(conn, &sink, "socks9.example.test").await;
    assert_eq!(
        header(&recorded, "X-Client-Addr"),
        Some("127.0.0.9"),
        "{recorded}"
    );
}

#[tokio::test]
async fn socks5_credentials_right_and_wrong() {
    let sink = SmtpSink::start();
    let socks = MicroSocks::start(Some(ip("127.0.0.10")), Some(("mailer", "s3cret")));
    let with = |pass: &str| {
        source(serde_json::json!({
            "name": "socks-auth", "socks5_proxy_server": socks.addr.to_string(),
            "socks5_proxy_username": "mailer", "socks5_proxy_password": pass,
        }))
    };
    let conn = connect(&with("s3cret"), sink.addr, TIMEOUT).await.unwrap();
    let recorded = deliver(conn, &sink, "auth.example.test").await;
    assert_eq!(header(&recorded, "X-Client-Addr"), Some("127.0.0.10"));

    let err = connect(&with("wrong"), sink.addr, TIMEOUT)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ConnectError::ProxyAuthFailed { .. }),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains(&socks.addr.to_string()) && text.contains("socks5_proxy_password"),
        "{text}"
    );

    let none = source(
        serde_json::json!({ "name": "socks-noauth", "socks5_proxy_server": socks.addr.to_string() }),
    );
    let err = connect(&none, sink.addr, TIMEOUT).await.unwrap_err();
    assert!(err.to_string().contains("requires credentials"), "{err}");
}

#[tokio::test]
async fn socks5_danted_standard_connect_and_no_source_choice() {
    let sink = SmtpSink::start();
    let dante = Danted::start();
    let src = source(
        serde_json::json!({ "name": "dante", "socks5_proxy_server": dante.addr.to_string() }),
    );
    let conn = connect(&src, sink.addr, TIMEOUT).await.unwrap();
    assert_eq!(
        conn.egress.ip,
        Some(ip("127.0.0.1")),
        "dante reports the address it connected from"
    );
    let recorded = deliver(conn, &sink, "dante.example.test").await;
    assert_eq!(header(&recorded, "X-Client-Addr"), Some("127.0.0.1"));

    let src = source(serde_json::json!({
        "name": "dante-src", "socks5_proxy_server": dante.addr.to_string(), "socks5_proxy_source_address": "127.0.0.11",
    }));
    let err = connect(&src, sink.addr, TIMEOUT).await.unwrap_err();
    assert!(
        matches!(err, ConnectError::SourceBindUnsupported { .. }),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains("does not support choosing a source address"),
        "{text}"
    );
    assert!(
        text.contains(&dante.addr.to_string()) && text.contains("127.0.0.11"),
        "{text}"
    );
}

#[tokio::test]
async fn socks5_source_address_convention() {
    let sink = SmtpSink::start();
    let proxy = SourceBindingSocks::start();
    let src = source(serde_json::json!({
        "name": "kumo-7", "socks5_proxy_server": proxy.addr.to_string(), "socks5_proxy_source_address": "127.0.0.7",
    }));
    let conn = connect(&src, sink.addr, TIMEOUT).await.unwrap();
    assert_eq!(conn.egress.ip, Some(ip("127.0.0.7")));
    let recorded = deliver(conn, &sink, "kumo7.example.test").await;
    assert_eq!(
        header(&recorded, "X-Client-Addr"),
        Some("127.0.0.7"),
        "{recorded}"
    );
}

#[tokio::test]
async fn closed_proxy_port_is_unreachable_at_once() {
    let port = egress_e2e::free_port();
    let src = source(
        serde_json::json!({ "name": "gone", "socks5_proxy_server": format!("127.0.0.1:{port}") }),
    );
    let started = Instant::now();
    let err = connect(&src, "127.0.0.1:25".parse().unwrap(), TIMEOUT)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ConnectError::ProxyUnreachable { .. }),
        "{err:?}"
    );
    assert!(
        started.elapsed() < TIMEOUT / 2,
        "a refused port is not a timeout"
    );
    assert!(
        err.to_string()
            .contains(&format!("SOCKS5 proxy '127.0.0.1:{port}' is unreachable")),
        "{err}"
    );
}

#[tokio::test]
async fn silent_proxy_times_out_in_the_handshake() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s); // accept, never answer
        }
    });
    let src =
        source(serde_json::json!({ "name": "silent", "socks5_proxy_server": addr.to_string() }));
    let timeout = Duration::from_millis(500);
    let started = Instant::now();
    let err = connect(&src, "127.0.0.1:25".parse().unwrap(), timeout)
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert!(
        err.is_timeout() && err.phase() == Phase::ProxyHandshake,
        "{err:?}"
    );
    assert!(
        took >= timeout && took < timeout + Duration::from_secs(2),
        "took {took:?}"
    );
    assert!(
        err.to_string().contains("during the proxy handshake"),
        "{err}"
    );
    hold.abort();
}

#[tokio::test]
async fn named_proxy_tries_each_address_in_turn() {
    let sink = SmtpSink::start();
    let socks = MicroSocks::start(Some(ip("127.0.0.12")), None);
    // 127.0.0.77 has nothing listening on the proxy's port: the first address is dead.
    let resolver =
        StaticResolver::new().with("proxy.example.test", [ip("127.0.0.77"), ip("127.0.0.1")]);
    let connector = Connector::new(Arc::new(resolver));
    let src = source(serde_json::json!({
        "name": "named", "socks5_proxy_server": format!("proxy.example.test:{}", socks.addr.port()),
    }));
    let conn = connector.connect(&src, sink.addr, TIMEOUT).await.unwrap();
    assert_eq!(conn.egress.via, Via::Socks5(socks.addr));
    let recorded = deliver(conn, &sink, "named.example.test").await;
    assert_eq!(header(&recorded, "X-Client-Addr"), Some("127.0.0.12"));

    // The system resolver: `localhost` from /etc/hosts.
    let src = source(serde_json::json!({
        "name": "localhost", "socks5_proxy_server": format!("localhost:{}", socks.addr.port()),
    }));
    connect(&src, sink.addr, TIMEOUT).await.unwrap();

    // An IPv6 source address skips the IPv4 candidates, and says so when none is left.
    let src = source(serde_json::json!({
        "name": "v6-only", "source_address": "::1", "socks5_proxy_server": format!("proxy.example.test:{}", socks.addr.port()),
    }));
    let err = connector
        .connect(&src, sink.addr, TIMEOUT)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ConnectError::FamilyMismatch { .. }),
        "{err:?}"
    );
}
