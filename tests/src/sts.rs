//! An MTA-STS policy host: Python's http.server behind TLS (a certificate for
//! `mta-sts.DOMAIN` from a test CA) on `IP:443`, serving
//! `/.well-known/mta-sts.txt`, its access log counting fetches.

use crate::pki::TestCa;
use crate::{require, require_root, temp_dir, wait_listening, Peer};
use std::fs;
use std::net::{IpAddr, SocketAddr};
use std::process::Command;

/// The policy host, stopped on drop.
pub struct StsPolicyHost {
    /// Where it listens (port 443, as RFC 8461 requires).
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
    _peer: Peer,
}

impl StsPolicyHost {
    /// Serves `policy` for `domain` on `ip:443` with a certificate from `ca`.
    pub fn start(ip: IpAddr, domain: &str, ca: &TestCa, policy: &str) -> StsPolicyHost {
        require_root("an HTTPS server on port 443");
        let python = require("python3");
        let dir = temp_dir("egress-sts-");
        let root = dir.path().join("www");
        fs::create_dir_all(root.join(".well-known")).expect("policy directory");
        let host = StsPolicyHost {
            addr: SocketAddr::new(ip, 443),
            dir,
            _peer: {
                fs::write(root.join(".well-known/mta-sts.txt"), policy).expect("policy");
                let issued = ca.issue(&format!("mta-sts.{domain}"), None);
                let log = fs::File::create(root.parent().unwrap().join("access.log")).unwrap();
                let script = format!(
                    "import http.server, ssl, functools\n\
                     handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory={root:?})\n\
                     server = http.server.ThreadingHTTPServer(({ip:?}, 443), handler)\n\
                     context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)\n\
                     context.load_cert_chain({cert:?}, {key:?})\n\
                     server.socket = context.wrap_socket(server.socket, server_side=True)\n\
                     server.serve_forever()\n",
                    root = root.display().to_string(),
                    ip = ip.to_string(),
                    cert = issued.cert.display().to_string(),
                    key = issued.key.display().to_string(),
                );
                let mut cmd = Command::new(python);
                cmd.arg("-c").arg(script).stderr(log);
                let mut peer = Peer::spawn_logged("python3 https policy host", &mut cmd);
                wait_listening(
                    "the MTA-STS policy host",
                    SocketAddr::new(ip, 443),
                    &mut peer,
                );
                peer
            },
        };
        host
    }

    /// Replaces the policy served.
    pub fn set_policy(&self, policy: &str) {
        fs::write(self.dir.path().join("www/.well-known/mta-sts.txt"), policy).expect("policy");
    }

    /// Times the policy was fetched.
    pub fn fetches(&self) -> usize {
        fs::read_to_string(self.dir.path().join("access.log"))
            .unwrap_or_default()
            .matches("GET /.well-known/mta-sts.txt")
            .count()
    }
}
