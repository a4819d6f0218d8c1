//! Embeds the relay in a program of your own: a policy, a `Relay`, a listener on a
//! `TcpListener`, and one message sent through it to a small destination that
//! prints what it saw. Everything is on loopback.
//!
//! ```text
//! cargo run -p egress-relay --example embed
//! ```

use egress_lua::{EsmtpListener, Policy, PolicyOptions};
use egress_relay::Relay;
use egress_smtp::{ClientSession, Timeouts};
use std::error::Error;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let destination = TcpListener::bind("127.0.0.1:0").await?;
    let next_hop = destination.local_addr()?;
    tokio::spawn(print_what_arrives(destination));

    // Every domain goes to the destination above, from 127.0.0.2 as mta2.example.test.
    let policy = Policy::from_source(
        "embed.lua",
        &format!(
            "kumo.on('get_queue_config', function(domain)
               return kumo.make_queue_config {{ egress_pool = 'main',
                 protocol = {{ smtp = {{ mx_list = {{ '[{}]:{}' }} }} }} }}
             end)
             kumo.on('get_egress_pool', function(name)
               return kumo.make_egress_pool {{ name = name, entries = {{ {{ name = 'ip-2' }} }} }}
             end)
             kumo.on('get_egress_source', function(name)
               return kumo.make_egress_source {{ name = name, source_address = '127.0.0.2',
                                                 ehlo_domain = 'mta2.example.test' }}
             end)",
            next_hop.ip(),
            next_hop.port()
        ),
        PolicyOptions::default(),
    )?;
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
