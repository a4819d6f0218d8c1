//! A small SMTP destination that misbehaves on purpose, where no packaged peer can
//! misbehave precisely enough: it answers the end of a message and then sends one
//! more reply nobody asked for — what a destination does when a client's commands
//! were smuggled inside a message, or when it is simply broken — or, as a large
//! mailbox provider does, answers MAIL from some client addresses with a 421 and
//! closes.

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A message as the destination received it.
#[derive(Debug, Clone)]
pub struct Received {
    /// Which connection (0, 1, …) carried it.
    pub connection: usize,
    /// MAIL FROM's argument, as sent.
    pub from: String,
    /// Each RCPT TO's argument and whether it was accepted.
    pub recipients: Vec<(String, bool)>,
}

#[derive(Default)]
struct Shared {
    connections: AtomicUsize,
    /// The client address of each connection, in order.
    peers: Mutex<Vec<IpAddr>>,
    active: AtomicUsize,
    max_active: AtomicUsize,
    received: Mutex<Vec<Received>>,
    /// Every command's verb, with its connection, in arrival order.
    commands: Mutex<Vec<(usize, String)>>,
    stopping: AtomicBool,
}

/// The scripted destination, stopped on drop. Recipients whose address contains
/// `refused` get `550 5.1.1`; everything else is accepted.
pub struct ScriptedDestination {
    /// Where it listens.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
}

impl ScriptedDestination {
    /// Starts it; with `stale_after_first_message`, the first message on each
    /// connection is answered `250` followed by an unasked `550 5.1.1`.
    pub fn start(stale_after_first_message: bool) -> ScriptedDestination {
        Self::start_with(stale_after_first_message, Duration::ZERO, false)
    }

    /// A well-behaved destination that offers PIPELINING (RFC 2920); it reads
    /// commands a line at a time, so pipelined ones are answered in order.
    pub fn pipelining() -> ScriptedDestination {
        Self::start_with(false, Duration::ZERO, true)
    }

    /// A well-behaved destination that takes `delay` to answer the end of each
    /// message, so that concurrent transactions overlap.
    pub fn slow(delay: Duration) -> ScriptedDestination {
        Self::start_with(false, delay, false)
    }

    /// A destination offering PIPELINING that answers MAIL FROM on connections
    /// from `clients` with `reply` (e.g. Yahoo's `421 4.7.0 [TSS04] …`) and then
    /// closes the connection without reading further; other clients are served.
    pub fn refusing_mail_from(clients: &[IpAddr], reply: &str) -> ScriptedDestination {
        Self::launch(Script {
            stale: false,
            delay: Duration::ZERO,
            pipelining: true,
            refuse_mail: Some((clients.to_vec(), reply.to_owned())),
            refuse_banner: None,
        })
    }

    /// A destination that greets connections from `clients` with `reply` (e.g.
    /// `421 4.7.0 [TSS04] …`) instead of its 220 banner, then closes; other
    /// clients are served.
    pub fn refusing_banner_to(clients: &[IpAddr], reply: &str) -> ScriptedDestination {
        Self::launch(Script {
            stale: false,
            delay: Duration::ZERO,
            pipelining: true,
            refuse_mail: None,
            refuse_banner: Some((clients.to_vec(), reply.to_owned())),
        })
    }

    fn start_with(
        stale_after_first_message: bool,
        delay: Duration,
        pipelining: bool,
    ) -> ScriptedDestination {
        Self::launch(Script {
            stale: stale_after_first_message,
            delay,
            pipelining,
            refuse_mail: None,
            refuse_banner: None,
        })
    }

    fn launch(script: Script) -> ScriptedDestination {
        let script = Arc::new(script);
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind scripted destination");
        let addr = listener.local_addr().expect("local addr");
        let shared = Arc::new(Shared::default());
        let accepting = shared.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if accepting.stopping.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                if let Ok(peer) = stream.peer_addr() {
                    lock(&accepting.peers).push(peer.ip());
                }
                let n = accepting.connections.fetch_add(1, Ordering::SeqCst);
                let now = accepting.active.fetch_add(1, Ordering::SeqCst) + 1;
                accepting.max_active.fetch_max(now, Ordering::SeqCst);
                let (shared, script) = (accepting.clone(), script.clone());
                std::thread::spawn(move || {
                    let _ = serve(stream, n, &script, &shared);
                    shared.active.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        ScriptedDestination { addr, shared }
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Connections accepted so far from `client`.
    pub fn connections_from(&self, client: IpAddr) -> usize {
        lock(&self.shared.peers)
            .iter()
            .filter(|ip| **ip == client)
            .count()
    }

    /// The most connections that were open at once.
    pub fn max_concurrent(&self) -> usize {
        self.shared.max_active.load(Ordering::SeqCst)
    }

    /// Each command's verb (`MAIL`, `RCPT`, `RSET`, …) with the connection that
    /// carried it, in the order they arrived.
    pub fn commands(&self) -> Vec<(usize, String)> {
        lock(&self.shared.commands).clone()
    }

    /// Messages received so far.
    pub fn received(&self) -> Vec<Received> {
        self.shared
            .received
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Drop for ScriptedDestination {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
    }
}

/// How a scripted destination behaves.
struct Script {
    /// The first message on a connection is followed by an unasked reply.
    stale: bool,
    /// The wait before answering the end of a message.
    delay: Duration,
    /// PIPELINING is offered.
    pipelining: bool,
    /// Clients whose MAIL FROM gets this reply, after which the connection closes.
    refuse_mail: Option<(Vec<IpAddr>, String)>,
    /// Clients greeted with this reply instead of the banner, then closed.
    refuse_banner: Option<(Vec<IpAddr>, String)>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn serve(
    stream: TcpStream,
    connection: usize,
    script: &Script,
    shared: &Shared,
) -> std::io::Result<()> {
    let (stale, delay) = (script.stale, script.delay);
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let refuse_mail = match (&script.refuse_mail, stream.peer_addr()) {
        (Some((clients, reply)), Ok(peer)) if clients.contains(&peer.ip()) => Some(reply.clone()),
        _ => None,
    };
    let refuse_banner = match (&script.refuse_banner, stream.peer_addr()) {
        (Some((clients, reply)), Ok(peer)) if clients.contains(&peer.ip()) => Some(reply.clone()),
        _ => None,
    };
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut out = stream;
    if let Some(reply) = refuse_banner {
        out.write_all(format!("{reply}\r\n").as_bytes())?;
        out.shutdown(std::net::Shutdown::Write)?;
        while reader.read_line(&mut String::new())? > 0 {}
        return Ok(());
    }
    out.write_all(b"220 scripted.test ESMTP\r\n")?;
    let mut current: Option<Received> = None;
    let mut messages_here = 0;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let upper = line.to_ascii_uppercase();
        let verb = upper.split_whitespace().next().unwrap_or("").to_owned();
        lock(&shared.commands).push((connection, verb));
        let reply: String = if upper.starts_with("EHLO") {
            match script.pipelining {
                true => "250-scripted.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n".into(),
                false => "250-scripted.test\r\n250 8BITMIME\r\n".into(),
            }
        } else if upper.starts_with("MAIL FROM:") && refuse_mail.is_some() {
            let reply = refuse_mail.unwrap_or_default();
            out.write_all(format!("{reply}\r\n").as_bytes())?;
            // Closed for writing at once, whatever was pipelined after MAIL (a FIN;
            // what the client still sends is read and dropped, so no RST can
            // overtake the reply).
            out.shutdown(std::net::Shutdown::Write)?;
            while reader.read_line(&mut String::new())? > 0 {}
            return Ok(());
        } else if upper.starts_with("MAIL FROM:") {
            current = Some(Received {
                connection,
                from: line[10..].trim().to_owned(),
                recipients: Vec::new(),
            });
            "250 2.1.0 ok\r\n".into()
        } else if upper.starts_with("RCPT TO:") {
            let to = line[8..].trim().to_owned();
            let ok = !to.contains("refused");
            if let Some(m) = current.as_mut() {
                m.recipients.push((to, ok));
            }
            if ok {
                "250 2.1.5 ok\r\n".into()
            } else {
                "550 5.1.1 no such user here\r\n".into()
            }
        } else if upper.starts_with("DATA") {
            out.write_all(b"354 go ahead\r\n")?;
            // The body, CR LF lines only, up to the lone dot.
            loop {
                let mut body = Vec::new();
                if reader.read_until(b'\n', &mut body)? == 0 {
                    return Ok(());
                }
                if body == b".\r\n" {
                    break;
                }
            }
            messages_here += 1;
            std::thread::sleep(delay);
            if let Some(m) = current.take() {
                shared
                    .received
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(m);
            }
            if stale && messages_here == 1 {
                "250 2.0.0 queued\r\n550 5.1.1 this reply answers nothing you asked\r\n".into()
            } else {
                "250 2.0.0 queued\r\n".into()
            }
        } else if upper.starts_with("RSET") {
            current = None;
            "250 2.0.0 reset\r\n".into()
        } else if upper.starts_with("QUIT") {
            out.write_all(b"221 2.0.0 bye\r\n")?;
            return Ok(());
        } else {
            "502 5.5.1 not here\r\n".into()
        };
        out.write_all(reply.as_bytes())?;
    }
}
