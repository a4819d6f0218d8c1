//! Embeds the relay in a program of your own, with a policy written in Rust (no
//! Lua): a `Relay`, a listener on a `TcpListener`, and one message sent through it
//! to a small destination that prints what it saw. Everything is on loopback.
//!
//! ```text
//! cargo run -p egress-relay --example embed
//! ```

use egress_relay::{Boxed, Declarations, EsmtpListener, Policy, PolicyError, Relay};
use egress_smtp::{ClientSession, Timeouts};
use egress_source::{EgressPathConfig, EgressPool, EgressSource, MxListEntry, QueueConfig};
use std::error::Error;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// Every domain goes to one next hop, through pool "main" = one source that
/// leaves from 127.0.0.2 as mta2.example.test. Your MTA would answer from its own
/// configuration; the relay asks these four questions per transaction.
struct OneNextHop {
    next_hop: SocketAddr,
}

fn answer<'a, T: Send + 'a>(value: T) -> Boxed<'a, Result<Arc<T>, PolicyError>> {
    Box::pin(async move { Ok(Arc::new(value)) })
}

impl Policy for OneNextHop {
    fn declarations(&self) -> Declarations {
        Declarations::default() // the system's resolver, no Redis, no spool
    }

    fn queue_config<'a>(
        &'a self,
        _domain: &'a str,
        _tenant: Option<&'a str>,
        _campaign: Option<&'a str>,
        _routing_domain: Option<&'a str>,
    ) -> Boxed<'a, Result<Arc<QueueConfig>, PolicyError>> {
        let literal = format!("[{}]:{}", self.next_hop.ip(), self.next_hop.port());
        let hop: MxListEntry = match literal.parse() {
            Ok(hop) => hop,
            Err(e) => return Box::pin(async move { Err(PolicyError::new(e)) }),
        };
        let queue = QueueConfig::for_pool("main").with_mx_list(vec![hop]);
        answer(queue)
    }

    fn egress_pool<'a>(&'a self, name: &'a str) -> Boxed<'a, Result<Arc<EgressPool>, PolicyError>> {
        let pool = EgressPool::of(name, [("ip-2", 1)]);
        Box::pin(async move { pool.map(Arc::new).map_err(PolicyError::new) })
    }

    fn egress_source<'a>(
        &'a self,
        name: &'a str,
    ) -> Boxed<'a, Result<Arc<EgressSource>, PolicyError>> {
        let mut source = EgressSource::named(name);
        source.source_address = Some("127.0.0.2".parse().expect("an address"));
        source.ehlo_domain = Some("mta2.example.test".into());
        answer(source)
    }

    fn egress_path_config<'a>(
        &'a self,
        _domain: &'a str,
        _source: &'a str,
        _site: Option<&'a str>,
    ) -> Boxed<'a, Result<Arc<EgressPathConfig>, PolicyError>> {
        answer(EgressPathConfig::default())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let destination = TcpListener::bind("127.0.0.1:0").await?;
    let next_hop = destination.local_addr()?;
    tokio::spawn(print_what_arrives(destination));

    let policy = OneNextHop { next_hop };
    let relay = Relay::builder(Arc::new(policy))
        .hostname("relay.example.test")
        .build()?;

    // Binding is ours; the relay accepts and serves until it shuts down.
    let socket = TcpListener::bind("127.0.0.1:0").await?;
    let listener = relay.listener(EsmtpListener {
        listen: socket.local_addr()?,
        ..EsmtpListener::default()
    })?;
    tokio::spawn(relay.clone().accept(socket, listener));

    // An application hands the relay one message.
    let relay_addr = relay.listeners()[0].config.listen;
    let stream = TcpStream::connect(relay_addr).await?;
    let mut app = ClientSession::new(stream, Timeouts::uniform(Duration::from_secs(10)));
    app.greet("app.example.test").await?;
    app.mail("<app@example.test>", false).await?;
    let rcpt = app.rcpt("<someone@example.net>").await?;
    println!("app: RCPT -> {} {}", rcpt.code, rcpt.message);
    app.data().await?;
    app.write_body(b"Subject: hello\r\n\r\nSent through an embedded relay.\r\n.\r\n")
        .await?;
    let done = app.end_of_data_reply().await?;
    println!("app: message -> {} {}", done.code, done.message);
    app.quit().await;

    relay.shutdown(Duration::from_secs(1)).await;
    Ok(())
}

/// A destination that accepts one message and prints who sent it and what.
async fn print_what_arrives(socket: TcpListener) -> std::io::Result<()> {
    let (stream, peer) = socket.accept().await?;
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    write
        .write_all(b"220 destination.example.net ESMTP\r\n")
        .await?;
    let mut in_data = false;
    while let Some(line) = lines.next_line().await? {
        if in_data {
            if line == "." {
                in_data = false;
                write.write_all(b"250 2.0.0 queued\r\n").await?;
            } else {
                println!("destination:   | {line}");
            }
            continue;
        }
        let verb = line.get(..4).unwrap_or_default().to_ascii_uppercase();
        let reply: &[u8] = match verb.as_str() {
            "EHLO" => {
                println!("destination: connection from {}, {line}", peer.ip());
                b"250 destination.example.net\r\n"
            }
            "DATA" => {
                in_data = true;
                b"354 go ahead\r\n"
            }
            "QUIT" => {
                write.write_all(b"221 bye\r\n").await?;
                return Ok(());
            }
            _ => b"250 2.1.0 ok\r\n",
        };
        write.write_all(reply).await?;
    }
    Ok(())
}
