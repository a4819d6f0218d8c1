//! The inbound session, end to end, fed arbitrary client octets over an in-memory
//! stream: egress-relay's real dispatch, transaction and DATA code (through the
//! public `Relay::serve`) relaying to an in-process destination on loopback.
//!
//! Invariants: no panic; every message the destination receives is a valid CR LF,
//! dot-stuffed stream (the destination ends lines at a bare LF, as pre-fix Postfix
//! did, and checks there is none); and one transaction downstream per transaction
//! upstream — the set of "queued as" ids the destination issued during this input
//! is exactly the set the client was told.
#![no_main]

use egress_lua::{EsmtpListener, InvalidLineEndings, Policy, PolicyOptions};
use egress_relay::{Listener, Relay};
use libfuzzer_sys::fuzz_target;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

struct World {
    rt: tokio::runtime::Runtime,
    relay: Arc<Relay>,
    listeners: [Arc<Listener>; 2],
    issued: Arc<Mutex<Vec<u64>>>,
    violations: Arc<Mutex<Vec<String>>>,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let issued = Arc::new(Mutex::new(Vec::new()));
        let violations = Arc::new(Mutex::new(Vec::new()));
        let dest = rt.block_on(destination(issued.clone(), violations.clone()));
        let policy = format!(
            "kumo.on('get_queue_config', function(domain)
               return kumo.make_queue_config {{ egress_pool = 'main', protocol = {{ smtp = {{ mx_list = {{ '[127.0.0.1]:{}' }} }} }} }}
             end)
             kumo.on('get_egress_pool', function(name)
               return kumo.make_egress_pool {{ name = name, entries = {{ {{ name = 'fuzz' }} }} }}
             end)
             kumo.on('get_egress_source', function(name)
               return kumo.make_egress_source {{ name = name }}
             end)",
            dest.port()
        );
        let policy = Policy::from_source("fuzz.lua", &policy, PolicyOptions::default())
            .expect("policy");
        let relay = rt.block_on(async {
            Relay::builder(Arc::new(policy))
                .hostname("fuzz.egressd.test")
                .build()
                .expect("relay")
        });
        let listener = |mode| {
            let config = EsmtpListener {
                invalid_line_endings: mode,
                max_message_size: 64 * 1024,
                ..EsmtpListener::default()
            };
            relay.listener(config).expect("listener")
        };
        let listeners = [
            listener(InvalidLineEndings::Deny),
            listener(InvalidLineEndings::Fix),
        ];
        World {
            rt,
            relay,
            listeners,
            issued,
            violations,
        }
    })
}

/// A lenient destination that checks what it gets.
async fn destination(
    issued: Arc<Mutex<Vec<u64>>>,
    violations: Arc<Mutex<Vec<String>>>,
) -> SocketAddr {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (issued, violations) = (issued.clone(), violations.clone());
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut read = BufReader::new(read);
                let _ = write.write_all(b"220 dest ESMTP\r\n").await;
                let mut line = Vec::new();
                loop {
                    line.clear();
                    if read.read_until(b'\n', &mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let upper = line.to_ascii_uppercase();
                    let reply: Vec<u8> = if upper.starts_with(b"EHLO") {
                        b"250-dest\r\n250 8BITMIME\r\n".to_vec()
                    } else if upper.starts_with(b"MAIL") || upper.starts_with(b"RSET") {
                        b"250 ok\r\n".to_vec()
                    } else if upper.starts_with(b"RCPT") {
                        if upper.windows(3).any(|w| w == b"BAD") {
                            b"550 5.1.1 no\r\n".to_vec()
                        } else {
                            b"250 ok\r\n".to_vec()
                        }
                    } else if upper.starts_with(b"DATA") {
                        let _ = write.write_all(b"354 go\r\n").await;
                        loop {
                            line.clear();
                            if read.read_until(b'\n', &mut line).await.unwrap_or(0) == 0 {
                                return; // closed mid-message: discarded
                            }
                            if !line.ends_with(b"\r\n") || line[..line.len() - 2].contains(&b'\r') {
                                violations.lock().unwrap().push(format!(
                                    "bad line ending: {:?}",
                                    String::from_utf8_lossy(&line)
                                ));
                            }
                            if line == b".\r\n" || line == b".\n" {
                                break;
                            }
                            if line.starts_with(b".") && !line.starts_with(b"..") {
                                violations.lock().unwrap().push(format!(
                                    "unstuffed dot line: {:?}",
                                    String::from_utf8_lossy(&line)
                                ));
                            }
                        }
                        let id = NEXT.fetch_add(1, Ordering::SeqCst);
                        issued.lock().unwrap().push(id);
                        format!("250 2.0.0 queued as Q{id}X\r\n").into_bytes()
                    } else if upper.starts_with(b"QUIT") {
                        let _ = write.write_all(b"221 bye\r\n").await;
                        return;
                    } else {
                        b"502 no\r\n".to_vec()
                    };
                    if write.write_all(&reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

fn ids_in(replies: &[u8]) -> Vec<u64> {
    let text = String::from_utf8_lossy(replies);
    text.match_indices("queued as Q")
        .filter_map(|(i, m)| {
            let rest = &text[i + m.len()..];
            rest.split('X').next()?.parse().ok()
        })
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let Some((&control, input)) = data.split_first() else {
        return;
    };
    let w = world();
    let listener = w.listeners[usize::from(control & 1)].clone();
    let before = w.issued.lock().unwrap().len();
    let replies = w.rt.block_on(async {
        let (mut client, server) = tokio::io::duplex(16 * 1024);
        let peer: SocketAddr = "127.0.0.1:4321".parse().unwrap();
        let relay = w.relay.clone();
        let session = tokio::spawn(async move { relay.serve(server, peer, &listener).await });
        let (mut read, mut write) = tokio::io::split(&mut client);
        let writer = async {
            let _ = write.write_all(input).await;
            let _ = write.shutdown().await;
        };
        let reader = async {
            let mut replies = Vec::new();
            let _ = read.read_to_end(&mut replies).await;
            replies
        };
        let (_, replies) = tokio::time::timeout(Duration::from_secs(20), async {
            tokio::join!(writer, reader)
        })
        .await
        .expect("the session ended within 20 s of the client's last octet");
        session.await.expect("no panic in the session");
        replies
    });
    let issued: Vec<u64> = w.issued.lock().unwrap()[before..].to_vec();
    assert_eq!(
        ids_in(&replies),
        issued,
        "replies: {}",
        String::from_utf8_lossy(&replies)
    );
    let violations = std::mem::take(&mut *w.violations.lock().unwrap());
    assert!(violations.is_empty(), "{violations:?}");
});
