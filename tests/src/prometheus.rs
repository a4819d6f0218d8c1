//! A real Prometheus server scraping targets on loopback, and a minimal HTTP/1.0
//! client (std only) for tests that speak to HTTP APIs from a chosen address.

use crate::{free_port, require, wait_listening, Peer};
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

/// An HTTP answer: status code, headers (as sent), body.
#[derive(Debug)]
pub struct HttpAnswer {
    /// The status code.
    pub status: u16,
    /// The header block.
    pub headers: String,
    /// The body, as text.
    pub body: String,
}

/// One HTTP/1.0 request to `to`, from `from` (bound first) when given, with
/// `extra` header lines and a body. Blocking, 30 s limit.
pub fn http_request(
    from: Option<IpAddr>,
    to: SocketAddr,
    method: &str,
    path: &str,
    extra: &[&str],
    body: &str,
) -> std::io::Result<HttpAnswer> {
    let mut stream = match from {
        Some(ip) => crate::connect_from(ip, to)?,
        None => TcpStream::connect_timeout(&to, Duration::from_secs(5))?,
    };
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut request = format!(
        "{method} {path} HTTP/1.0\r\nHost: {to}\r\nContent-Length: {}\r\n",
        body.len()
    );
    for line in extra {
        request.push_str(line);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes())?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok(HttpAnswer {
        status,
        headers: head.to_owned(),
        body: body.to_owned(),
    })
}

/// `GET path` from the default address.
pub fn http_get(to: SocketAddr, path: &str) -> HttpAnswer {
    http_request(None, to, "GET", path, &[], "")
        .unwrap_or_else(|e| panic!("GET http://{to}{path}: {e}"))
}

/// Percent-encodes a query value (unreserved characters kept).
pub fn query_escape(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `prometheus` scraping `targets` every second, storing in a temporary
/// directory, answering on `127.0.0.1:<free port>`; stopped on drop.
pub struct Prometheus {
    /// Its HTTP API.
    pub addr: SocketAddr,
    _dir: tempfile::TempDir,
    _peer: Peer,
}

impl Prometheus {
    /// Starts one with a scrape job `egressd` over `targets` (`host:port`).
    pub fn start(targets: &[SocketAddr]) -> Prometheus {
        let bin = require("prometheus");
        let dir = tempfile::tempdir().unwrap();
        let listed: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: egressd\n    static_configs:\n      - targets: [{}]\n",
            listed.join(", ")
        );
        let file = dir.path().join("prometheus.yml");
        std::fs::write(&file, config).unwrap();
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut cmd = Command::new(bin);
        cmd.arg(format!("--config.file={}", file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .current_dir(dir.path());
        let mut peer = Peer::spawn("prometheus", &mut cmd);
        wait_listening("prometheus", addr, &mut peer);
        Prometheus {
            addr,
            _dir: dir,
            _peer: peer,
        }
    }

    /// The value of an instant query when it returns exactly one sample.
    pub fn query(&self, promql: &str) -> Option<f64> {
        let path = format!("/api/v1/query?query={}", query_escape(promql));
        let answer = http_request(None, self.addr, "GET", &path, &[], "").ok()?;
        let doc: serde_json::Value = serde_json::from_str(&answer.body).ok()?;
        match doc["data"]["result"].as_array()?.as_slice() {
            [one] => one["value"][1].as_str()?.parse().ok(),
            _ => None,
        }
    }

    /// Polls `promql` until it equals `expected` or `limit` passes; the last value.
    pub fn wait_for(&self, promql: &str, expected: f64, limit: Duration) -> Option<f64> {
        let started = Instant::now();
        loop {
            let value = self.query(promql);
            if value == Some(expected) || started.elapsed() >= limit {
                return value;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}
