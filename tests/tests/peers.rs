//! Every peer the other tests rely on starts and does its job. When a peer is not
//! installed, this is where CI says so first, with the install command.

use egress_e2e::{
    header, send_mail, Danted, Dnsmasq, HaProxy, MicroSocks, SmtpSink, SourceBindingSocks,
};
use std::net::TcpStream;

#[test]
fn smtp_sink_records_client_address_and_helo() {
    let sink = SmtpSink::start();
    let stream = TcpStream::connect(sink.addr).unwrap();
    send_mail(
        stream,
        "peer.example.test",
        "a@example.test",
        "b@example.test",
    )
    .unwrap();
    let m = sink.wait_for(1);
    assert_eq!(header(&m[0], "X-Client-Addr"), Some("127.0.0.1"));
    assert_eq!(header(&m[0], "X-Helo-Args"), Some("peer.example.test"));
}

#[test]
fn proxies_and_dns_start() {
    let _haproxy = HaProxy::start();
    let _micro = MicroSocks::start(None, None);
    let _dante = Danted::start();
    let _kumo_style = SourceBindingSocks::start();
    let _dns = Dnsmasq::start(&["--host-record=mx1.example.test,127.0.0.1"]);
}

#[test]
fn missing_binaries_fail_with_the_install_command() {
    let err = std::panic::catch_unwind(|| egress_e2e::require("no-such-peer-binary")).unwrap_err();
    let text = err.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(
        text.contains("cargo xtask peers") && text.contains("apt-get install"),
        "{text}"
    );
}
