//! SMTP clients the tests drive a relay with: swaks (a real client) and `Raw`, a
//! hand-driven one for what swaks cannot send (bare line endings, 8-bit addresses,
//! one octet at a time). Shared by egress-relay's in-process tests and egressd's
//! tests of the binary.

use crate::require;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// How many of `messages` (smtp-sink dumps) each `X-Client-Addr` sent.
pub fn by_client_addr(messages: &[String]) -> std::collections::HashMap<String, usize> {
    let mut counts = std::collections::HashMap::new();
    for m in messages {
        *counts
            .entry(crate::header(m, "X-Client-Addr").unwrap_or("?").to_owned())
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

/// The names of the files in `dir` (a spool's).
pub fn spool_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Polls `done` every 50 ms until it holds or `limit` passes; whether it held.
pub fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    done()
}

/// One transaction, three domains, with Python's smtplib (an application library
/// with no queue of its own).
pub fn smtplib_send(server: SocketAddr, from: &str, to: &[&str], body: &str) -> String {
    let script = format!(
        "import smtplib\n\
         s = smtplib.SMTP('{}', {}, timeout=30)\n\
         s.ehlo('app.test')\n\
         refused = s.sendmail('{from}', {:?}, {:?})\n\
         print('refused', refused)\n\
         print('limits', s.esmtp_features.get('limits'))\n\
         s.quit()\n",
        server.ip(),
        server.port(),
        to,
        body
    );
    let out = Command::new(require("python3"))
        .arg("-c")
        .arg(script)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "smtplib: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
