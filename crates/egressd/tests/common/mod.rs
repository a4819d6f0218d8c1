//! Running the real egressd binary and the real swaks client against it.
#![allow(dead_code)]

use egress_e2e::{free_port, require, wait_listening, Peer};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Output};

/// egressd serving a policy, stopped on drop. Its log is kept for assertions.
pub struct Egressd {
    pub addr: SocketAddr,
    /// The HTTP listener, when the policy has `{http}` in it.
    pub http: Option<SocketAddr>,
    pub dir: tempfile::TempDir,
    peer: Peer,
}

impl Egressd {
    /// Starts egressd with `policy`, in which `{listen}` stands for a free loopback
    /// address (and `{http}`, when present, for another: the HTTP listener's).
    pub fn start(policy: &str) -> Egressd {
        Self::start_with_args(policy, &[])
    }

    /// As [`start`](Self::start), with more command-line arguments.
    pub fn start_with_args(policy: &str, args: &[&str]) -> Egressd {
        Self::start_with_env(policy, args, &[])
    }

    /// As [`start_with_args`](Self::start_with_args), with environment variables
    /// (`SSL_CERT_FILE` for a test CA).
    pub fn start_with_env(policy: &str, args: &[&str], env: &[(&str, &str)]) -> Egressd {
        let dir = tempfile::tempdir().unwrap();
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let file = dir.path().join("policy.lua");
        let http = policy
            .contains("{http}")
            .then(|| SocketAddr::from(([127, 0, 0, 1], free_port())));
        let mut text = policy.replace("{listen}", &addr.to_string());
        if let Some(http) = http {
            text = text.replace("{http}", &http.to_string());
        }
        std::fs::write(&file, text).unwrap();
        let log = std::fs::File::create(dir.path().join("egressd.log")).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_egressd"));
        cmd.arg("serve")
            .arg("--policy")
            .arg(&file)
            .args(args)
            .envs(env.iter().copied())
            .env("EGRESSD_LOG", "info");
        cmd.stdout(log.try_clone().unwrap()).stderr(log);
        let mut peer = Peer::spawn_logged("egressd", &mut cmd);
        wait_listening("egressd", addr, &mut peer);
        if let Some(http) = http {
            wait_listening("egressd's HTTP listener", http, &mut peer);
        }
        Egressd {
            addr,
            http,
            dir,
            peer,
        }
    }

    /// Runs an `egressd` API command (`status`, `suspend`, …) against this
    /// instance's HTTP listener.
    pub fn ctl(&self, args: &[&str]) -> Output {
        let http = self
            .http
            .expect("the policy starts no HTTP listener ({http})");
        Command::new(env!("CARGO_BIN_EXE_egressd"))
            .args(args)
            .arg("--endpoint")
            .arg(format!("http://{http}"))
            .output()
            .unwrap()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("egressd.log")).unwrap_or_default()
    }

    pub fn policy_path(&self) -> PathBuf {
        self.dir.path().join("policy.lua")
    }

    pub fn pid(&self) -> u32 {
        self.peer.id()
    }

    /// Waits up to `limit` for egressd to exit; true if it did.
    pub fn wait_exit(&mut self, limit: std::time::Duration) -> bool {
        self.peer.wait_exit(limit)
    }
}

/// How many of `messages` (smtp-sink dumps) each `X-Client-Addr` sent.
pub fn by_client_addr(messages: &[String]) -> std::collections::HashMap<String, usize> {
    let mut counts = std::collections::HashMap::new();
    for m in messages {
        *counts
            .entry(
                egress_e2e::header(m, "X-Client-Addr")
                    .unwrap_or("?")
                    .to_owned(),
            )
            .or_insert(0) += 1;
    }
    counts
}

/// swaks' transcript and exit status.
pub struct Swaks {
    pub ok: bool,
    pub transcript: String,
}

/// Sends one message with swaks; `extra` are further swaks flags.
pub fn swaks(server: SocketAddr, to: &str, extra: &[&str]) -> Swaks {
    let out: Output = Command::new(require("swaks"))
        .args([
            "--server",
            &server.to_string(),
            "--from",
            "sender@client.test",
            "--to",
            to,
        ])
        .args(["--timeout", "30"])
        .args(extra)
        .output()
        .expect("run swaks");
    Swaks {
        ok: out.status.success(),
        transcript: format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

impl Swaks {
    /// The server's reply lines (swaks marks them `<-`, or `<~` over TLS, with a `*`
    /// for an error).
    pub fn replies(&self) -> Vec<&str> {
        self.transcript
            .lines()
            .filter_map(|l| {
                l.strip_prefix("<** ")
                    .or_else(|| l.strip_prefix("<~* "))
                    .or_else(|| l.strip_prefix("<-  "))
                    .or_else(|| l.strip_prefix("<~  "))
            })
            .collect()
    }

    /// The first reply that starts with `start` (empty when none does).
    pub fn first_reply(&self, start: &str) -> String {
        self.replies()
            .into_iter()
            .find(|r| r.starts_with(start))
            .unwrap_or_default()
            .to_owned()
    }

    pub fn has_reply(&self, start: &str) -> bool {
        self.replies().iter().any(|r| r.starts_with(start))
    }
}

/// A hand-driven SMTP client, for what swaks cannot send (bare line endings,
/// 8-bit addresses, one octet at a time).
pub struct Raw {
    reader: std::io::BufReader<std::net::TcpStream>,
    writer: std::net::TcpStream,
}

impl Raw {
    /// Connects and reads the banner.
    pub fn connect(addr: SocketAddr) -> (Raw, String) {
        let stream = std::net::TcpStream::connect(addr).expect("connect to egressd");
        Raw::over(stream)
    }

    /// Wraps a connected stream and reads the banner.
    pub fn over(stream: std::net::TcpStream) -> (Raw, String) {
        stream
            .set_read_timeout(Some(std::time::Duration::from_secs(30)))
            .unwrap();
        let mut raw = Raw {
            reader: std::io::BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
        };
        let banner = raw.reply();
        (raw, banner)
    }

    /// The next whole reply (all its lines); empty when the server closed.
    pub fn reply(&mut self) -> String {
        use std::io::BufRead;
        let mut all = String::new();
        loop {
            let mut line = String::new();
            match self.reader.read_line(&mut line) {
                Ok(0) | Err(_) => return all,
                Ok(_) => {}
            }
            all.push_str(&line);
            if line.len() < 4 || line.as_bytes()[3] != b'-' {
                return all;
            }
        }
    }

    /// A reply if one arrives within `limit` (None if none did; the connection
    /// stays usable).
    pub fn reply_within(&mut self, limit: std::time::Duration) -> Option<String> {
        use std::io::BufRead;
        self.writer.set_read_timeout(Some(limit)).unwrap();
        let available = self.reader.fill_buf().map(|b| !b.is_empty());
        self.writer
            .set_read_timeout(Some(std::time::Duration::from_secs(30)))
            .unwrap();
        match available {
            Ok(true) => Some(self.reply()),
            Ok(false) => Some(String::new()),
            Err(_) => None,
        }
    }

    /// The connection, for a caller that takes over (a TLS handshake).
    pub fn into_inner(self) -> std::net::TcpStream {
        self.writer
    }

    /// Writes raw octets.
    pub fn send(&mut self, bytes: &[u8]) {
        use std::io::Write;
        let _ = self.writer.write_all(bytes);
    }

    /// Sends a command line and reads its reply.
    pub fn cmd(&mut self, line: &str) -> String {
        self.send(format!("{line}\r\n").as_bytes());
        self.reply()
    }
}
