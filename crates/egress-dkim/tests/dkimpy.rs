//! Signatures checked by an independent verifier: dkimpy (Debian's
//! `python3-dkim`, with `python3-nacl` for Ed25519), its DNS answered with the
//! public key made here by openssl. Every canonicalization pair, over_sign,
//! expiration and the other tags, RSA-2048 and Ed25519.

use egress_dkim::{KeyKind, Signer, SignerParams};
use egress_e2e::{dkim_key, dkimpy_verify};
use std::path::Path;

/// A key of `kind` in `dir`: its PEM, and the DKIM TXT record of its public key.
fn key(dir: &Path, kind: KeyKind) -> (String, String) {
    let pem = dir.join(format!("{kind:?}.pem"));
    let record = dkim_key(&pem, kind == KeyKind::Ed25519);
    (std::fs::read_to_string(&pem).unwrap(), record)
}

/// dkimpy's verdicts, both signing domains' records being the key's.
fn verify(_dir: &Path, message: &[u8], record: &str) -> String {
    let names = ["s1._domainkey.example.com", "s1._domainkey.esp.example.org"];
    dkimpy_verify(message, &names.map(|n| (n, record)))
}

const MESSAGE: &str = "From: Sender <sender@example.com>\r\nTo: someone@example.net\r\nSubject:   A  subject\r\n  folded here\r\nDate: Tue, 08 Dec 2026 00:00:00 +0000\r\nX-Trailing: spaces   \r\n\r\nHello  there, \t\r\n.leading dot\r\n\r\n\r\n";

fn signed(pem: &str, kind: KeyKind, extra: serde_json::Value, message: &str) -> Vec<u8> {
    let mut v = serde_json::json!({
        "domain": "example.com", "selector": "s1",
        "headers": ["From", "To", "Subject", "Date", "X-Trailing"],
        "key": { "key_data": pem },
    });
    for (k, x) in extra.as_object().unwrap() {
        v[k] = x.clone();
    }
    let params: SignerParams = serde_json::from_value(v).unwrap();
    let field = Signer::new(kind, params)
        .unwrap()
        .sign(message.as_bytes())
        .unwrap();
    format!("{field}{message}").into_bytes()
}

#[test]
fn dkimpy_verifies_every_mode_for_rsa_and_ed25519() {
    let dir = tempfile_dir();
    for kind in [KeyKind::Rsa, KeyKind::Ed25519] {
        let (pem, record) = key(&dir, kind);
        for (h, b) in [
            ("Relaxed", "Relaxed"),
            ("Relaxed", "Simple"),
            ("Simple", "Relaxed"),
            ("Simple", "Simple"),
        ] {
            let extra =
                serde_json::json!({ "header_canonicalization": h, "body_canonicalization": b });
            let message = signed(&pem, kind, extra, MESSAGE);
            assert_eq!(
                verify(&dir, &message, &record),
                "pass",
                "{kind:?} {h}/{b}:\n{}",
                String::from_utf8_lossy(&message)
            );
        }
        let every = serde_json::json!({
            "over_sign": true, "expiration": 3600, "agent_user_identifier": "@example.com",
            "body_length": true, "reporting": true,
        });
        let message = signed(&pem, kind, every, MESSAGE);
        assert_eq!(
            verify(&dir, &message, &record),
            "pass",
            "{kind:?} every tag"
        );
        let text = String::from_utf8_lossy(&message).replace("\r\n\t", "");
        assert!(
            text.contains("h=From:From:To:To:Subject:Subject:Date:Date:X-Trailing:X-Trailing;"),
            "{text}"
        );

        // Over-signed: a From added after signing breaks it.
        let forged = String::from_utf8(message.clone()).unwrap().replacen(
            "To: someone",
            "From: forged@example.org\r\nTo: someone",
            1,
        );
        assert_eq!(
            verify(&dir, forged.as_bytes(), &record),
            "fail",
            "{kind:?} forged"
        );
        // And the body may not change.
        let changed = String::from_utf8(message)
            .unwrap()
            .replace("Hello", "Jello");
        assert_eq!(verify(&dir, changed.as_bytes(), &record), "fail");
    }
}

#[test]
fn two_signatures_both_pass() {
    let dir = tempfile_dir();
    let (rsa, rsa_record) = key(&dir, KeyKind::Rsa);
    let first = signed(&rsa, KeyKind::Rsa, serde_json::json!({}), MESSAGE);
    let second = signed(
        &rsa,
        KeyKind::Rsa,
        serde_json::json!({ "domain": "esp.example.org" }),
        std::str::from_utf8(&first).unwrap(),
    );
    assert_eq!(verify(&dir, &second, &rsa_record), "pass pass");
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "egress-dkim-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
