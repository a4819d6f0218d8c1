//! Every field egress writes has KumoMTA's name and shape: records of each type
//! egressd makes are checked against a record written here from KumoMTA's log
//! record reference (`docs/reference/log_record.md`), field by field.

use egress_record::{conforms, REFERENCE};
use egress_record::{
    LogRecord, PeerAddress, RecordType, Response, SourceAddress, NIL_UUID, UNCATEGORIZED,
};
use serde_json::Value;

fn full(kind: RecordType) -> LogRecord {
    let mut r = LogRecord::new(kind, "6b17517506c370000", "app@sender.test");
    r.recipient = vec!["user@example.net".into()];
    r.queue = "example.net".into();
    r.site = "[127.0.0.1]:25".into();
    r.size = 100;
    r.response = Response::new(250, Some([2, 0, 0]), "Ok", Some("."));
    r.peer_address = Some(PeerAddress {
        name: "mx.example.net".into(),
        addr: "192.0.2.1".into(),
    });
    r.egress_pool = Some("main".into());
    r.egress_source = Some("ip-2".into());
    r.source_address = Some(SourceAddress {
        address: "127.0.0.2:0".into(),
        protocol: Some("socks5"),
        server: Some("127.0.0.1:1080".parse().unwrap()),
    });
    r.meta
        .insert("received_from".into(), "127.0.0.1:5000".into());
    r.headers.insert("Subject".into(), "hi".into());
    r.delivery_protocol = Some("ESMTP".into());
    r.reception_protocol = Some("ESMTP".into());
    r.tls_cipher = Some("TLS13_AES_256_GCM_SHA384".into());
    r.tls_protocol_version = Some("TLSv1.3".into());
    r.tls_peer_subject_name = Some(vec!["CN=mx.example.net".into()]);
    r.provider_name = Some("example".into());
    r.session_id = Some("6f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9".into());
    r
}

#[test]
fn every_field_we_write_is_kumomtas_with_its_shape() {
    let written = [
        RecordType::Reception,
        RecordType::Delivery,
        RecordType::TransientFailure,
        RecordType::Bounce,
        RecordType::Rejection,
        RecordType::Expiration,
        RecordType::AdminBounce,
    ];
    for kind in written {
        let ours: Value = serde_json::from_str(&full(kind).to_json()).unwrap();
        conforms(&ours).unwrap_or_else(|e| panic!("{kind:?}: {e}"));
        // The bare record (nothing known) conforms too: nulls where KumoMTA has them.
        let bare: Value = serde_json::from_str(&LogRecord::new(kind, "x", "").to_json()).unwrap();
        conforms(&bare).unwrap_or_else(|e| panic!("{kind:?} bare: {e}"));
        assert_eq!(ours["type"], kind.name());
    }
}

#[test]
fn every_field_of_the_reference_is_written() {
    let reference: Value = serde_json::from_str(REFERENCE).unwrap();
    let ours: Value = serde_json::from_str(&full(RecordType::Delivery).to_json()).unwrap();
    for key in reference.as_object().unwrap().keys() {
        assert!(ours.get(key).is_some(), "we never write {key}");
    }
    assert_eq!(
        LogRecord::new(RecordType::Bounce, "", "").bounce_classification,
        UNCATEGORIZED
    );
    assert_eq!(
        &*LogRecord::new(RecordType::Bounce, "", "").nodeid,
        NIL_UUID
    );
}

#[test]
fn a_wrong_shape_is_caught() {
    let mut ours: Value = serde_json::from_str(&full(RecordType::Delivery).to_json()).unwrap();
    ours["size"] = "100".into();
    assert!(conforms(&ours).unwrap_err().contains("size"));
    let mut extra: Value = serde_json::from_str(&full(RecordType::Delivery).to_json()).unwrap();
    extra["egress_ip"] = "127.0.0.2".into();
    assert!(conforms(&extra).unwrap_err().contains("egress_ip"));
}
