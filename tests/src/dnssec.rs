//! DNSSEC-signed zones served by a real authoritative server: keys made and zones
//! signed with ldnsutils (`ldns-keygen`, `ldns-signzone`), served by NSD on
//! loopback. A resolver that trusts [`SignedZones::trust_anchor`] validates them.

use crate::{free_port, require, wait_listening, Peer};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A zone to serve.
pub struct Zone<'a> {
    /// Its origin, without the final dot (`dane.test`).
    pub origin: &'a str,
    /// Its records in master-file syntax, relative to the origin (no SOA: one is
    /// added).
    pub records: &'a str,
    /// Sign it (its key becomes a trust anchor).
    pub signed: bool,
    /// After signing, replace the first text with the second in the signed file —
    /// a record changed under its signature (bogus).
    pub tamper: Option<(&'a str, &'a str)>,
}

/// NSD serving the zones; stops when dropped.
pub struct SignedZones {
    /// Where NSD answers (UDP and TCP).
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
    _nsd: Peer,
}

impl SignedZones {
    /// Signs what is to be signed and starts NSD on 127.0.0.1.
    pub fn start(zones: &[Zone]) -> SignedZones {
        let nsd = require("nsd");
        let keygen = require("ldns-keygen");
        let signzone = require("ldns-signzone");
        let dir = tempfile::tempdir().expect("temporary directory");
        let port = free_port();
        let mut conf = format!(
            "server:\n  ip-address: 127.0.0.1@{port}\n  port: {port}\n  do-ip6: no\n  \
             zonesdir: \"{d}\"\n  pidfile: \"{d}/nsd.pid\"\n  database: \"\"\n  \
             username: \"\"\n  xfrdfile: \"{d}/xfrd.state\"\n  zonelistfile: \"{d}/zone.list\"\n  \
             logfile: \"{d}/nsd.log\"\n  verbosity: 1\nremote-control:\n  control-enable: no\n",
            d = dir.path().display()
        );
        let mut anchors = String::new();
        for zone in zones {
            let file = dir.path().join(format!("{}.zone", zone.origin));
            std::fs::write(
                &file,
                format!(
                    "$ORIGIN {o}.\n$TTL 300\n@ IN SOA ns.{o}. hostmaster.{o}. 1 3600 600 86400 300\n{}\n",
                    zone.records,
                    o = zone.origin
                ),
            )
            .expect("zone file");
            let served = if zone.signed {
                let out = run(Command::new(&keygen).current_dir(dir.path()).args([
                    "-a",
                    "ECDSAP256SHA256",
                    "-k",
                    zone.origin,
                ]));
                let key = out.trim().to_owned();
                anchors.push_str(&read(&dir.path().join(format!("{key}.key"))));
                run(Command::new(&signzone)
                    .current_dir(dir.path())
                    .arg(&file)
                    .arg(&key));
                let signed = PathBuf::from(format!("{}.signed", file.display()));
                if let Some((from, to)) = zone.tamper {
                    let text = read(&signed);
                    assert!(text.contains(from), "{from} is not in the signed zone");
                    std::fs::write(&signed, text.replacen(from, to, 1)).expect("tampered zone");
                }
                signed
            } else {
                file
            };
            conf.push_str(&format!(
                "zone:\n  name: \"{}\"\n  zonefile: \"{}\"\n",
                zone.origin,
                served.display()
            ));
        }
        std::fs::write(dir.path().join("nsd.conf"), conf).expect("nsd.conf");
        std::fs::write(dir.path().join("anchors.key"), anchors).expect("trust anchors");
        let mut peer = Peer::spawn(
            "nsd",
            Command::new(nsd)
                .arg("-d")
                .arg("-c")
                .arg(dir.path().join("nsd.conf")),
        );
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        wait_listening("nsd", addr, &mut peer);
        SignedZones {
            addr,
            dir,
            _nsd: peer,
        }
    }

    /// The `kumo.dns.configure_resolver` table that asks NSD and validates its
    /// zones with their keys as the only trust anchors.
    pub fn validating_resolver(&self) -> String {
        format!(
            "{{ name_servers = {{ '{}' }}, options = {{ validate = true, trust_anchor_file = '{}' }} }}",
            self.addr,
            self.trust_anchor().display()
        )
    }

    /// The signed zones' keys (DNSKEY records), for `trust_anchor_file`.
    pub fn trust_anchor(&self) -> PathBuf {
        self.dir.path().join("anchors.key")
    }
}

/// The SHA-256 of a PEM certificate's SubjectPublicKeyInfo, in hex — the data of
/// a `3 1 1` TLSA record — computed by openssl, apart from the code under test.
pub fn tlsa_3_1_1(cert: &Path) -> String {
    let out = run(Command::new("sh").arg("-c").arg(format!(
        "openssl x509 -in '{}' -noout -pubkey | openssl pkey -pubin -outform DER | \
         openssl dgst -sha256 -hex | sed 's/^.*= //'",
        cert.display()
    )));
    let hex = out.trim().to_owned();
    assert_eq!(hex.len(), 64, "a SHA-256 in hex: {out}");
    hex
}

/// The SHA-256 of a PEM certificate (DER), in hex — the data of a `2 0 1` TLSA
/// record naming it as a trust anchor — computed by openssl.
pub fn tlsa_2_0_1(cert: &Path) -> String {
    let out = run(Command::new("sh").arg("-c").arg(format!(
        "openssl x509 -in '{}' -outform DER | openssl dgst -sha256 -hex | sed 's/^.*= //'",
        cert.display()
    )));
    let hex = out.trim().to_owned();
    assert_eq!(hex.len(), 64, "a SHA-256 in hex: {out}");
    hex
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("running a DNSSEC tool");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
