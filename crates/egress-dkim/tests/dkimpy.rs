//! Signatures checked by an independent verifier: dkimpy (Debian's
//! `python3-dkim`, with `python3-nacl` for Ed25519), its DNS answered with the
//! public key made here by openssl. Every canonicalization pair, over_sign,
//! expiration and the other tags, RSA-2048 and Ed25519.

use base64::Engine;
use egress_dkim::{KeyKind, Signer, SignerParams};
use std::path::Path;
use std::process::Command;

const VERIFY: &str = r#"
import dkim, sys
message = open(sys.argv[1], 'rb').read()
record = open(sys.argv[2], 'rb').read()
d = dkim.DKIM(message)
results = []
for i in range(len([l for l in message.split(b'\r\n\r\n')[0].split(b'\r\n') if l.lower().startswith(b'dkim-signature:')])):
    try:
        ok = d.verify(idx=i, dnsfunc=lambda name, timeout=5: record)
    except dkim.ValidationError:
        ok = False
    results.append('pass' if ok else 'fail')
print(' '.join(results))
"#;

fn need(path: &str, package: &str) {
    assert!(
        Path::new(path).exists(),
        "{path} is missing: apt-get install {package} (or cargo xtask peers)"
    );
}

fn openssl(args: &[&str]) -> Vec<u8> {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl (apt-get install openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A key of `kind` in `dir`: its PEM, and the DKIM TXT record of its public key.
fn key(dir: &Path, kind: KeyKind) -> (String, String) {
    let pem = dir.join(format!("{kind:?}.pem"));
    let pem_path = pem.to_str().unwrap();
    match kind {
        KeyKind::Rsa => openssl(&[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            pem_path,
        ]),
        KeyKind::Ed25519 => openssl(&["genpkey", "-algorithm", "ed25519", "-out", pem_path]),
    };
    let spki = openssl(&["pkey", "-in", pem_path, "-pubout", "-outform", "DER"]);
    let b64 = base64::engine::general_purpose::STANDARD;
    let record = match kind {
        KeyKind::Rsa => format!("v=DKIM1; k=rsa; p={}", b64.encode(&spki)),
        // RFC 8463: the raw 32-octet key, the end of the SubjectPublicKeyInfo.
        KeyKind::Ed25519 => format!(
            "v=DKIM1; k=ed25519; p={}",
            b64.encode(&spki[spki.len() - 32..])
        ),
    };
    (std::fs::read_to_string(&pem).unwrap(), record)
}

fn verify(dir: &Path, message: &[u8], record: &str) -> String {
    need(
        "/usr/lib/python3/dist-packages/dkim/__init__.py",
        "python3-dkim",
    );
    need(
        "/usr/lib/python3/dist-packages/nacl/__init__.py",
        "python3-nacl",
    );
    let (m, r) = (dir.join("message.eml"), dir.join("record.txt"));
    std::fs::write(&m, message).unwrap();
    std::fs::write(&r, record).unwrap();
    let out = Command::new("/usr/bin/python3")
        .args(["-c", VERIFY])
        .arg(&m)
        .arg(&r)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "dkimpy: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
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
