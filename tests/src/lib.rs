//! Real peers for tests, started on loopback and stopped on drop.
//!
//! Every mode of egress is proven against software we did not write: Postfix's
//! `smtp-sink` records the client address and EHLO name it saw, `haproxy` speaks PROXY
//! v2, `microsocks` and `danted` are SOCKS5 servers, `dnsmasq` answers MX queries.
//! A missing binary is a panic with the install command (`cargo xtask peers`), never a
//! skip.
#![forbid(unsafe_code)]

mod clients;
mod dkim;
mod dnssec;
mod pki;
mod policies;
mod prometheus;
mod redis;
mod scripted;
mod source_socks;
mod stores;
mod sts;
pub use clients::{by_client_addr, smtplib_send, spool_files, swaks, wait_until, Raw, Swaks};
pub use dkim::{dkim_key, dkimpy_verify};
pub use dnssec::{tlsa_2_0_1, tlsa_3_1_1, SignedZones, Zone};
pub use pki::{Issued, SelfSigned, TestCa};
pub use policies::{
    mx_entry, path_policy, relay_policy, shaping_policy, spool_policy, three_connections, IP2_POOL,
};
pub use prometheus::{http_get, http_request, query_escape, HttpAnswer, Prometheus};
pub use redis::{RedisCluster, RedisServer, SharedRedis};
pub use scripted::{Received, ScriptedDestination};
pub use source_socks::SourceBindingSocks;
pub use stores::{sasl_smarthost, Dovecot};
pub use sts::StsPolicyHost;

use std::fs;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const INSTALL: &str = "run `cargo xtask peers` (apt-get install -y haproxy dante-server microsocks swaks postfix dnsmasq nsd ldnsutils openssl redis-server redis-tools)";

/// The path of a peer binary, or a panic that says how to install it.
pub fn require(binary: &str) -> PathBuf {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"])
        .map(|dir| Path::new(dir).join(binary))
        .find(|p| p.is_file());
    found.unwrap_or_else(|| panic!("test peer `{binary}` is not installed: {INSTALL}"))
}

/// Panics, saying why, unless the tests run as root: haproxy's transparent
/// `usesrc clientip`, smtp-sink's privilege drop and a private Postfix need it.
pub fn require_root(peer: &str) {
    static ROOT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let root = *ROOT.get_or_init(|| {
        Command::new("id")
            .arg("-u")
            .output()
            .map(|o| o.stdout.starts_with(b"0\n"))
            .unwrap_or(false)
    });
    assert!(root, "{peer} needs the tests to run as root (CI does: `sudo -E env \"PATH=$PATH\" cargo xtask ci`)");
}

/// A free TCP port on 127.0.0.1 (bound, read, released), never the same one twice in
/// a process: tests run in parallel threads, and two peers told the same port would
/// race for it.
pub fn free_port() -> u16 {
    use std::collections::HashSet;
    use std::sync::Mutex;
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    let given = given.get_or_insert_with(HashSet::new);
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port");
        if given.insert(port) {
            return port;
        }
    }
}

/// A child process killed (and reaped) on drop.
pub struct Peer {
    name: String,
    child: Child,
}

impl Peer {
    /// Spawns `cmd`, output discarded unless `EGRESS_TEST_PEER_LOGS` is set.
    pub fn spawn(name: &str, cmd: &mut Command) -> Peer {
        if std::env::var_os("EGRESS_TEST_PEER_LOGS").is_none() {
            cmd.stdout(Stdio::null()).stderr(Stdio::null());
        }
        Self::spawn_logged(name, cmd)
    }

    /// Spawns `cmd` keeping the output redirections the caller set up.
    pub fn spawn_logged(name: &str, cmd: &mut Command) -> Peer {
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e} ({cmd:?})"));
        Peer {
            name: name.to_owned(),
            child,
        }
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Waits up to `limit` for the process to exit on its own; true if it did.
    pub fn wait_exit(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Panics if the process has already exited (a config it refused, a port in use).
    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!(
                "{} exited early: {status}; rerun with EGRESS_TEST_PEER_LOGS=1 to see why",
                self.name
            );
        }
    }

    /// Kills the process and waits for it (what dropping it does).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Waits until `addr` accepts TCP connections, or panics naming `what`.
pub fn wait_listening(what: &str, addr: SocketAddr, peer: &mut Peer) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        peer.assert_running();
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("{what} did not start listening on {addr} within 10 s");
}

fn temp_dir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("temp dir")
}

/// Postfix's `smtp-sink`: accepts mail and dumps each message to a file whose first
/// lines are `X-Client-Addr:` (the address it saw) and `X-Helo-Args:` (the EHLO name).
pub struct SmtpSink {
    /// Where it listens.
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
    /// smtp-sink's `-v` output, when started to record the commands it hears.
    conversation: Option<tempfile::NamedTempFile>,
    _peer: Peer,
}

impl SmtpSink {
    /// A sink on `127.0.0.1:<free port>`.
    pub fn start() -> SmtpSink {
        Self::start_with(IpAddr::from([127, 0, 0, 1]), &[])
    }

    /// A sink on `ip`, with extra smtp-sink flags (`-r rcpt` to reject RCPT with 5xx,
    /// `-f data` for 4xx at DATA, …).
    pub fn start_with(ip: IpAddr, flags: &[&str]) -> SmtpSink {
        Self::start_on(SocketAddr::new(ip, free_port()), flags)
    }

    /// A sink on `127.0.0.1:<free port>` that keeps nothing (no `-d`): for
    /// measuring cost, where writing a file per message would be most of the
    /// sink's work. [`messages`](Self::messages) is always empty.
    pub fn start_discarding() -> SmtpSink {
        Self::launch(
            SocketAddr::new(IpAddr::from([127, 0, 0, 1]), free_port()),
            &[],
            false,
        )
    }

    /// A sink on a given address (to restart one where another stood).
    pub fn start_on(addr: SocketAddr, flags: &[&str]) -> SmtpSink {
        Self::launch(addr, flags, true)
    }

    /// A sink on `127.0.0.1:<free port>` that also records every command it hears
    /// (smtp-sink `-v`), for [`commands`](Self::commands). smtp-sink offers
    /// `AUTH PLAIN LOGIN` and accepts any credential.
    pub fn start_recording_commands() -> SmtpSink {
        Self::launch(
            SocketAddr::new(IpAddr::from([127, 0, 0, 1]), free_port()),
            &["-v"],
            true,
        )
    }

    /// The commands heard so far, in order (only for
    /// [`start_recording_commands`](Self::start_recording_commands)).
    pub fn commands(&self) -> Vec<String> {
        let Some(file) = &self.conversation else {
            return Vec::new();
        };
        let text = fs::read_to_string(file.path()).unwrap_or_default();
        text.lines()
            // Each line is `PROGRAM: text`, PROGRAM as smtp-sink was invoked.
            .filter_map(|l| l.split_once("smtp-sink: ").map(|(_, text)| text))
            .filter(|l| {
                let verb = l.split(' ').next().unwrap_or("");
                verb.len() >= 4 && verb.bytes().all(|b| b.is_ascii_uppercase())
            })
            .map(str::to_owned)
            .collect()
    }

    fn launch(addr: SocketAddr, flags: &[&str], dump: bool) -> SmtpSink {
        let bin = require("smtp-sink");
        require_root("smtp-sink (-u nobody)");
        let dir = temp_dir("egress-sink-");
        // smtp-sink drops privileges to `nobody`, which must be able to write the dumps.
        set_mode(dir.path(), 0o777);
        let listen = match addr.ip() {
            IpAddr::V6(ip) => format!("[{ip}]:{}", addr.port()),
            IpAddr::V4(ip) => format!("{ip}:{}", addr.port()),
        };
        let template = format!("{}/%M%S.", dir.path().display());
        let mut cmd = Command::new(bin);
        cmd.args(["-u", "nobody"]);
        if dump {
            cmd.args(["-d", &template]);
        }
        cmd.args(flags).args([&listen, "100"]);
        let (mut peer, conversation) = if flags.contains(&"-v") {
            let log = tempfile::NamedTempFile::new().expect("smtp-sink log file");
            let err = log.reopen().expect("smtp-sink log file");
            cmd.stdout(Stdio::null()).stderr(err);
            (Peer::spawn_logged("smtp-sink", &mut cmd), Some(log))
        } else {
            (Peer::spawn("smtp-sink", &mut cmd), None)
        };
        wait_listening("smtp-sink", addr, &mut peer);
        SmtpSink {
            addr,
            dir,
            conversation,
            _peer: peer,
        }
    }

    /// Messages received so far, counted without reading them (always 0 for a
    /// discarding sink).
    pub fn count(&self) -> usize {
        fs::read_dir(self.dir.path()).map_or(0, |d| d.count())
    }

    /// Its process id (for reading its CPU time).
    pub fn pid(&self) -> u32 {
        self._peer.id()
    }

    /// Every message dumped so far, in no particular order.
    pub fn messages(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Ok(entries) = fs::read_dir(self.dir.path()) {
            for entry in entries.flatten() {
                if let Ok(text) = fs::read_to_string(entry.path()) {
                    out.push(text);
                }
            }
        }
        out
    }

    /// Waits until at least `n` messages are dumped (up to 10 s) and returns them all.
    /// smtp-sink creates a dump at MAIL FROM and writes it as the message arrives,
    /// so the dumps are returned only once they have stopped changing: a message is
    /// never seen half-written.
    pub fn wait_for(&self, n: usize) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut last: Option<Vec<String>> = None;
        loop {
            let mut messages = self.messages();
            messages.sort();
            if messages.len() >= n && last.as_ref() == Some(&messages) {
                return messages;
            }
            if Instant::now() > deadline {
                return messages;
            }
            let settling = messages.len() >= n;
            last = Some(messages);
            std::thread::sleep(Duration::from_millis(if settling { 50 } else { 20 }));
        }
    }
}

/// The value of a header in a dumped message (`X-Client-Addr`, `X-Helo-Args`, …).
pub fn header<'a>(message: &'a str, name: &str) -> Option<&'a str> {
    message.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.eq_ignore_ascii_case(name).then_some(value.trim())
    })
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
}

/// `haproxy` with `accept-proxy` in front and `usesrc clientip` behind: it connects to
/// the destination named in the PROXY header, from the source address in the header.
pub struct HaProxy {
    /// Where it accepts PROXY v2 connections.
    pub addr: SocketAddr,
    _dir: tempfile::TempDir,
    _peer: Peer,
}

impl HaProxy {
    /// Starts haproxy on `127.0.0.1:<free port>`.
    pub fn start() -> HaProxy {
        let config = |port| {
            format!(
                "global\n  maxconn 4096\n\
                 defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n\
                 frontend egress\n  bind 127.0.0.1:{port} accept-proxy\n  default_backend dynamic\n\
                 backend dynamic\n  source 0.0.0.0 usesrc clientip\n  server dyn 0.0.0.0:0\n"
            )
        };
        let (addr, dir, peer) = start_with_config("haproxy", config, |cfg, _| {
            vec!["-f".into(), cfg.into(), "-db".into()]
        });
        HaProxy {
            addr,
            _dir: dir,
            _peer: peer,
        }
    }
}

/// Starts `binary` listening on `127.0.0.1:<free port>` with a configuration file
/// written from `config(port)`; `args(config_path, dir)` gives its command line.
fn start_with_config(
    binary: &str,
    config: impl FnOnce(u16) -> String,
    args: impl FnOnce(&Path, &Path) -> Vec<std::ffi::OsString>,
) -> (SocketAddr, tempfile::TempDir, Peer) {
    let bin = require(binary);
    require_root(binary);
    let dir = temp_dir(&format!("egress-{binary}-"));
    let port = free_port();
    let cfg = dir.path().join(format!("{binary}.conf"));
    fs::write(&cfg, config(port)).unwrap_or_else(|e| panic!("write {}: {e}", cfg.display()));
    let mut cmd = Command::new(bin);
    cmd.args(args(&cfg, dir.path()));
    let mut peer = Peer::spawn(binary, &mut cmd);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    wait_listening(binary, addr, &mut peer);
    (addr, dir, peer)
}

/// `microsocks`, a standard SOCKS5 server.
pub struct MicroSocks {
    /// Where it listens.
    pub addr: SocketAddr,
    _peer: Peer,
}

impl MicroSocks {
    /// Starts microsocks on `127.0.0.1:<free port>`; `egress_ip` is its `-b` (the address
    /// it connects out from); `auth` its `-u/-P`.
    pub fn start(egress_ip: Option<IpAddr>, auth: Option<(&str, &str)>) -> MicroSocks {
        let bin = require("microsocks");
        let port = free_port();
        let mut cmd = Command::new(bin);
        cmd.args(["-i", "127.0.0.1", "-p", &port.to_string()]);
        if let Some(ip) = egress_ip {
            cmd.args(["-b", &ip.to_string()]);
        }
        if let Some((user, pass)) = auth {
            cmd.args(["-u", user, "-P", pass]);
        }
        let mut peer = Peer::spawn("microsocks", &mut cmd);
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        wait_listening("microsocks", addr, &mut peer);
        MicroSocks { addr, _peer: peer }
    }

    /// Its process id (for reading its CPU time).
    pub fn pid(&self) -> u32 {
        self._peer.id()
    }
}

/// `danted` (Dante), a standard SOCKS5 server; it sends from 127.0.0.1.
pub struct Danted {
    /// Where it listens.
    pub addr: SocketAddr,
    _dir: tempfile::TempDir,
    _peer: Peer,
}

impl Danted {
    /// Starts danted on `127.0.0.1:<free port>`, no authentication, loopback only.
    pub fn start() -> Danted {
        let config = |port| {
            format!(
                "logoutput: stderr\n\
                 internal: 127.0.0.1 port = {port}\n\
                 external: 127.0.0.1\n\
                 socksmethod: none\n\
                 clientmethod: none\n\
                 user.privileged: root\n\
                 user.unprivileged: nobody\n\
                 client pass {{ from: 127.0.0.0/8 to: 0.0.0.0/0 }}\n\
                 socks pass {{ from: 127.0.0.0/8 to: 0.0.0.0/0 command: bind connect }}\n"
            )
        };
        let args = |cfg: &Path, dir: &Path| {
            vec![
                "-f".into(),
                cfg.into(),
                "-p".into(),
                dir.join("danted.pid").into(),
                "-N".into(),
                "1".into(),
            ]
        };
        let (addr, dir, peer) = start_with_config("danted", config, args);
        Danted {
            addr,
            _dir: dir,
            _peer: peer,
        }
    }

    /// The id of its main process (its workers are its children).
    pub fn pid(&self) -> u32 {
        self._peer.id()
    }
}

/// `dnsmasq` answering on `127.0.0.1:<port>` (UDP and TCP) from the records given as
/// its own flags (`--mx-host=…`, `--host-record=…`), and nothing else.
pub struct Dnsmasq {
    /// Where it answers.
    pub addr: SocketAddr,
    peer: Peer,
}

impl Dnsmasq {
    /// Starts dnsmasq with `records` (dnsmasq flags).
    pub fn start(records: &[&str]) -> Dnsmasq {
        Self::start_on(free_port(), records)
    }

    /// Replaces the records: dnsmasq reads `--txt-record` and the like only at
    /// start, so it is started again on the same address (as a zone changing
    /// under a resolver that keeps asking the same server).
    pub fn restart(&mut self, records: &[&str]) {
        let port = self.addr.port();
        // The old one goes first: the new one binds the same port.
        self.peer.stop();
        *self = Self::start_on(port, records);
    }

    fn start_on(port: u16, records: &[&str]) -> Dnsmasq {
        let bin = require("dnsmasq");
        let mut cmd = Command::new(bin);
        cmd.args([
            "-d",
            "-k",
            "-p",
            &port.to_string(),
            "--listen-address=127.0.0.1",
            "--bind-interfaces",
            "--no-resolv",
            "--no-hosts",
            // Authoritative for the test TLDs: a name it has no records for is
            // NXDOMAIN, as on the Internet, not REFUSED (no upstream to ask).
            "--local=/test/",
            "--local=/example/",
            "--user=root",
            "--pid-file",
        ])
        .args(records);
        let mut peer = Peer::spawn("dnsmasq", &mut cmd);
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        wait_listening("dnsmasq", addr, &mut peer);
        Dnsmasq { addr, peer }
    }
}

/// Sends one message over an open connection to an SMTP server (blocking): reads the
/// banner, EHLO `ehlo`, MAIL, RCPT, DATA, QUIT. Returns the final reply to the dot.
/// Used to push a real transaction through a connection the code under test made.
pub fn send_mail(stream: TcpStream, ehlo: &str, from: &str, to: &str) -> std::io::Result<String> {
    use std::io::{BufRead, BufReader, Write};
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    let mut expect = |code: &str| -> std::io::Result<String> {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line)? == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("closed; wanted {code}: {all}"),
                ));
            }
            all.push_str(&line);
            if line.len() < 4 || line.as_bytes()[3] != b'-' {
                break;
            }
        }
        if all.starts_with(code) {
            Ok(all)
        } else {
            Err(std::io::Error::other(format!("wanted {code}, got {all}")))
        }
    };
    expect("220")?;
    writer.write_all(format!("EHLO {ehlo}\r\n").as_bytes())?;
    expect("250")?;
    writer.write_all(format!("MAIL FROM:<{from}>\r\n").as_bytes())?;
    expect("250")?;
    writer.write_all(format!("RCPT TO:<{to}>\r\n").as_bytes())?;
    expect("250")?;
    writer.write_all(b"DATA\r\n")?;
    expect("354")?;
    writer.write_all(
        format!("From: <{from}>\r\nTo: <{to}>\r\nSubject: egress test\r\n\r\nhello\r\n.\r\n")
            .as_bytes(),
    )?;
    let done = expect("250")?;
    writer.write_all(b"QUIT\r\n")?;
    let _ = expect("221");
    Ok(done)
}

/// A real Postfix instance (its own configuration, queue and log in a temporary
/// directory) that accepts mail on `127.0.0.1:<free port>` from loopback clients and
/// relays everything to `relayhost`: how an existing MTA hands its mail to egressd.
pub struct Postfix {
    /// Where its smtpd listens.
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
    peer: Peer,
}

impl Postfix {
    /// Starts Postfix in the foreground (`postfix start-fg`) relaying to `relayhost`.
    pub fn start(relayhost: SocketAddr) -> Postfix {
        Self::start_with(relayhost, "")
    }

    /// As [`start`](Self::start), with more `main.cf` lines (later lines win):
    /// TLS for its smtpd, SASL for its SMTP client, …
    pub fn start_with(relayhost: SocketAddr, main_cf: &str) -> Postfix {
        let bin = require("postfix");
        require_root("a private Postfix instance");
        // Postfix's daemons log through a unix datagram socket to postlogd, which
        // the master starts on demand; with Linux's default queue of 10 datagrams
        // a burst of log lines (several instances starting at once) can block the
        // master on its own socket, and then every daemon. A longer queue avoids it.
        raise_unix_dgram_queue();
        let dir = temp_dir("egress-postfix-");
        // Postfix's daemons run as the `postfix` user and must reach these paths.
        set_mode(dir.path(), 0o755);
        let (etc, queue, data) = (
            dir.path().join("etc"),
            dir.path().join("queue"),
            dir.path().join("data"),
        );
        for d in [&etc, &queue, &data] {
            fs::create_dir_all(d).expect("postfix directories");
        }
        let chown = Command::new("chown").arg("postfix").arg(&data).status();
        assert!(
            chown.map(|s| s.success()).unwrap_or(false),
            "chown postfix {}",
            data.display()
        );
        let port = free_port();
        fs::write(
            etc.join("main.cf"),
            format!(
                "compatibility_level = 3.6\n\
                 queue_directory = {queue}\n\
                 data_directory = {data}\n\
                 myhostname = postfix.example.test\n\
                 mydestination =\n\
                 inet_interfaces = 127.0.0.1\n\
                 inet_protocols = ipv4\n\
                 relayhost = [{}]:{}\n\
                 mynetworks = 127.0.0.0/8\n\
                 smtpd_relay_restrictions = permit_mynetworks, reject\n\
                 maillog_file_prefixes = {root}\n\
                 maillog_file = {root}/maillog\n\
                 alias_maps =\n\
                 alias_database =\n\
                 local_transport = error:local delivery is disabled\n\
                 smtp_tls_security_level = none\n\
                 smtpd_tls_security_level = none\n\
                 {main_cf}\n",
                relayhost.ip(),
                relayhost.port(),
                queue = queue.display(),
                data = data.display(),
                root = dir.path().display(),
            ),
        )
        .expect("write main.cf");
        // Only the services a relay needs; nothing chrooted.
        fs::write(
            etc.join("master.cf"),
            format!(
                "127.0.0.1:{port} inet n - n - - smtpd\n\
                 cleanup unix n - n - 0 cleanup\n\
                 qmgr unix n - n 300 1 qmgr\n\
                 rewrite unix - - n - - trivial-rewrite\n\
                 bounce unix - - n - 0 bounce\n\
                 defer unix - - n - 0 bounce\n\
                 trace unix - - n - 0 bounce\n\
                 verify unix - - n - 1 verify\n\
                 flush unix n - n 1000? 0 flush\n\
                 proxymap unix - - n - - proxymap\n\
                 smtp unix - - n - - smtp\n\
                 relay unix - - n - - smtp\n\
                 showq unix n - n - - showq\n\
                 error unix - - n - - error\n\
                 retry unix - - n - - error\n\
                 discard unix - - n - - discard\n\
                 anvil unix - - n - 1 anvil\n\
                 scache unix - - n - 1 scache\n\
                 tlsmgr unix - - n 1000? 1 tlsmgr\n\
                 postlog unix-dgram n - n - 1 postlogd\n"
            ),
        )
        .expect("write master.cf");
        let mut cmd = Command::new(bin);
        cmd.arg("-c").arg(&etc).arg("start-fg");
        let mut peer = Peer::spawn("postfix", &mut cmd);
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        wait_listening(
            "postfix (see its maillog in the test's temporary directory)",
            addr,
            &mut peer,
        );
        Postfix { addr, dir, peer }
    }

    /// Postfix's own log.
    pub fn maillog(&self) -> String {
        fs::read_to_string(self.dir.path().join("maillog")).unwrap_or_default()
    }
}

/// Raises `net.unix.max_dgram_qlen` to 512 (see [`Postfix::start_with`]); best
/// effort.
fn raise_unix_dgram_queue() {
    let knob = "/proc/sys/net/unix/max_dgram_qlen";
    let current: u32 = fs::read_to_string(knob)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    if current < 512 {
        let _ = fs::write(knob, "512");
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        // `postfix stop` ends the master and every daemon it started; killing the
        // foreground process alone could leave daemons behind. It can block for
        // ever when Postfix's own logging has stalled (its `master -t` waits on a
        // full postlog socket): after ten seconds the master's process group is
        // killed instead.
        use std::os::unix::process::CommandExt;
        let stop = Command::new(require("postfix"))
            .arg("-c")
            .arg(self.dir.path().join("etc"))
            .arg("stop")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn();
        if let Ok(mut stop) = stop {
            let stopped = wait_until(Duration::from_secs(10), || {
                matches!(stop.try_wait(), Ok(Some(_)))
            });
            if !stopped {
                let group = |pid: u32| {
                    let _ = Command::new("kill")
                        .args(["-KILL", "--", &format!("-{pid}")])
                        .status();
                };
                group(stop.id());
                let master = self.dir.path().join("queue/pid/master.pid");
                if let Some(pid) = fs::read_to_string(master)
                    .ok()
                    .and_then(|p| p.trim().parse::<u32>().ok())
                {
                    group(pid);
                }
                let _ = stop.wait();
            }
        }
        let _ = self.peer.child.try_wait();
    }
}

/// A TCP connection to `to` from the local address `from` (any 127.0.0.0/8 address
/// is local on Linux): a client that looks like another host.
pub fn connect_from(from: IpAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(to), Type::STREAM, None)?;
    socket.bind(&SocketAddr::new(from, 0).into())?;
    socket.connect_timeout(&to.into(), Duration::from_secs(10))?;
    Ok(socket.into())
}

/// Runs `systemd-analyze verify` on `unit` (a unit file's text) with its
/// `installed` binary path pointed at `binary` (verify checks that ExecStart is
/// executable): what it said, or nothing. It reports ignored or misspelt settings
/// on stderr yet exits 0, so both count.
pub fn systemd_verify(unit: &str, installed: &str, binary: &str) -> Result<(), String> {
    let dir = temp_dir("egress-unit-");
    let name = Path::new(installed)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "unit".into());
    let file = dir.path().join(format!("{name}.service"));
    fs::write(&file, unit.replace(installed, binary)).expect("write the unit");
    let out = Command::new(require("systemd-analyze"))
        .arg("verify")
        .arg(&file)
        .output()
        .expect("systemd-analyze");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    match out.status.success() && said.trim().is_empty() {
        true => Ok(()),
        false => Err(said),
    }
}

/// One message over `stream` (a connection the code under test made to `sink`),
/// EHLO `ehlo`: what the sink recorded for it.
pub fn deliver_through(stream: TcpStream, sink: &SmtpSink, ehlo: &str) -> String {
    // A stream taken from tokio (`into_std`) is still non-blocking.
    stream.set_nonblocking(false).expect("a blocking stream");
    let before = sink.messages().len();
    send_mail(stream, ehlo, "a@example.test", "b@example.test")
        .expect("a transaction through the connection");
    let messages = sink.wait_for(before + 1);
    assert_eq!(messages.len(), before + 1, "the sink recorded the message");
    messages
        .into_iter()
        .find(|m| header(m, "X-Helo-Args") == Some(ehlo))
        .expect("the message sent with this EHLO name")
}

/// `main.cf` lines for a Postfix smtpd offering STARTTLS with `issued`, noting
/// TLS in its `Received:` header.
pub fn postfix_tls_main_cf(issued: &pki::Issued) -> String {
    format!(
        "smtpd_tls_security_level = may\n\
         smtpd_tls_cert_file = {}\n\
         smtpd_tls_key_file = {}\n\
         smtpd_tls_received_header = yes\n",
        issued.cert.display(),
        issued.key.display()
    )
}

/// CPU seconds `pid` has used so far, (user, kernel), from `/proc/PID/stat`
/// (clock ticks of 1/100 s, as on Linux): what the benchmarks count per message.
pub fn cpu_seconds(pid: u32) -> (f64, f64) {
    const TICKS: f64 = 100.0;
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name is in parentheses and may hold spaces: fields count after it.
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after ')'.
    (ticks(11) / TICKS, ticks(12) / TICKS)
}
