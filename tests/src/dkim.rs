//! DKIM keys made with openssl and signatures checked by dkimpy (Debian's
//! `python3-dkim`, `python3-nacl` for Ed25519): the independent verifier the
//! signing tests trust, its DNS answered with the records given here.

use crate::require;
use base64::Engine;
use std::path::Path;
use std::process::Command;

fn openssl(args: &[&str]) -> Vec<u8> {
    let out = Command::new(require("openssl"))
        .args(args)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Makes a private key at `path` (PKCS#8 PEM; RSA-2048, or Ed25519) and returns
/// the DKIM TXT record of its public key.
pub fn dkim_key(path: &Path, ed25519: bool) -> String {
    let p = path.to_str().expect("a UTF-8 path");
    let b64 = base64::engine::general_purpose::STANDARD;
    if ed25519 {
        openssl(&["genpkey", "-algorithm", "ed25519", "-out", p]);
    } else {
        openssl(&[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            p,
        ]);
    }
    let spki = openssl(&["pkey", "-in", p, "-pubout", "-outform", "DER"]);
    if ed25519 {
        // RFC 8463: the raw 32-octet key, the end of the SubjectPublicKeyInfo.
        format!(
            "v=DKIM1; k=ed25519; p={}",
            b64.encode(&spki[spki.len() - 32..])
        )
    } else {
        format!("v=DKIM1; k=rsa; p={}", b64.encode(&spki))
    }
}

const VERIFY: &str = r#"
import dkim, sys
message = open(sys.argv[1], 'rb').read()
records = dict(arg.split('=', 1) for arg in sys.argv[2:])
def dns(name, timeout=5):
    return records[name.decode().rstrip('.')].encode()
d = dkim.DKIM(message)
count = sum(1 for l in message.split(b'\r\n\r\n')[0].split(b'\r\n') if l.lower().startswith(b'dkim-signature:'))
results = []
for i in range(count):
    try:
        ok = d.verify(idx=i, dnsfunc=dns)
    except dkim.ValidationError:
        ok = False
    results.append('pass' if ok else 'fail')
print(' '.join(results))
"#;

/// dkimpy's verdict on each DKIM-Signature of `message` (`pass` or `fail`,
/// space-separated, top first); `records` answer its DNS: (`SELECTOR._domainkey.DOMAIN`,
/// TXT record).
pub fn dkimpy_verify(message: &[u8], records: &[(&str, &str)]) -> String {
    for (file, package) in [
        (
            "/usr/lib/python3/dist-packages/dkim/__init__.py",
            "python3-dkim",
        ),
        (
            "/usr/lib/python3/dist-packages/nacl/__init__.py",
            "python3-nacl",
        ),
    ] {
        assert!(
            Path::new(file).exists(),
            "{file} is missing: apt-get install {package} (or cargo xtask peers)"
        );
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("message.eml");
    std::fs::write(&file, message).expect("write message");
    let out = Command::new("/usr/bin/python3")
        .args(["-c", VERIFY])
        .arg(&file)
        .args(
            records
                .iter()
                .map(|(name, record)| format!("{name}={record}")),
        )
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "dkimpy: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}
