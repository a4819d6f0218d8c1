//! The relay embedded in a program (this test process), through its public
//! interface only, relaying to a real smtp-sink on loopback: what the destination
//! records, what the client hears, and what the relay reports.

mod common;

use common::Embedded;
use egress_e2e::{connect_from, header, mx_entry, send_mail, SmtpSink};
use egress_relay::{Origin, PathReport, Report};
use std::net::{IpAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Counts what the relay reports: connections opened, and transactions by reply.
#[derive(Default)]
struct Tally {
    opened: AtomicU64,
    transactions: Mutex<Vec<(String, Option<u16>, Origin)>>,
}

struct TallyPath {
    tally: Arc<Tally>,
    label: String,
}

impl PathReport for TallyPath {
    fn connection_opened(&self, _took: Duration) {
        self.tally.opened.fetch_add(1, Ordering::Relaxed);
    }

    fn transaction(&self, code: Option<u16>, origin: Origin, _size: u64, _took: Duration) {
        let mut list = self.tally.transactions.lock().unwrap();
        list.push((self.label.clone(), code, origin));
    }
}

struct Reporting(Arc<Tally>);

impl Report for Reporting {
    fn path(&self, source: &str, pool: &str, _site: &str) -> Option<Arc<dyn PathReport>> {
        Some(Arc::new(TallyPath {
            tally: self.0.clone(),
            label: format!("{source}/{pool}"),
        }))
    }
}

/// A relay on `{listen}` with the listener fields `listener` (Lua); every domain goes
/// to `sink` through pool `main` = source `ip-2` (127.0.0.2, EHLO mta2.example.test).
/// What it reports is counted in the returned tally.
fn start(sink: &SmtpSink, listener: &str) -> (Embedded, Arc<Tally>) {
    let policy = format!(
        "kumo.on('init', function()
           kumo.start_esmtp_listener {{ listen = '{{listen}}', hostname = 'relay.example.test', {listener} }}
         end)
         kumo.on('get_queue_config', function(domain)
           return kumo.make_queue_config {{ egress_pool = 'main',
             protocol = {{ smtp = {{ mx_list = {{ '{}' }} }} }} }}
         end)
         kumo.on('get_egress_pool', function(name)
           return kumo.make_egress_pool {{ name = name, entries = {{ {{ name = 'ip-2' }} }} }}
         end)
         kumo.on('get_egress_source', function(name)
           return kumo.make_egress_source {{ name = name, source_address = '127.0.0.2',
                                             ehlo_domain = 'mta2.example.test' }}
         end)",
        mx_entry(sink.addr)
    );
    let tally = Arc::new(Tally::default());
    let relay = Embedded::start_reporting(&policy, Arc::new(Reporting(tally.clone())));
    (relay, tally)
}

#[test]
fn a_message_leaves_from_the_pools_source_and_the_reply_is_the_destinations() {
    let sink = SmtpSink::start();
    let (relay, tally) = start(&sink, "");
    let stream = TcpStream::connect(relay.addr).unwrap();
    let reply = send_mail(stream, "app.test", "app@client.test", "someone@dest.test").unwrap();
    assert!(reply.starts_with("250"), "{reply}");
    let m = sink.wait_for(1);
    assert_eq!(m.len(), 1);
    assert_eq!(header(&m[0], "X-Client-Addr"), Some("127.0.0.2"));
    assert_eq!(header(&m[0], "X-Helo-Args"), Some("mta2.example.test"));
    assert!(m[0].contains("by relay.example.test"), "{}", m[0]);
    // Reported: one connection through ip-2, one transaction the destination accepted.
    assert_eq!(tally.opened.load(Ordering::Relaxed), 1);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while tally.transactions.lock().unwrap().is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        *tally.transactions.lock().unwrap(),
        [("ip-2/main".to_owned(), Some(250), Origin::Destination)]
    );
}

#[test]
fn a_recipient_the_destination_refuses_gets_the_destinations_own_reply() {
    let sink = SmtpSink::start_with(IpAddr::from([127, 0, 0, 1]), &["-f", "rcpt"]);
    let (relay, _) = start(&sink, "");
    let stream = TcpStream::connect(relay.addr).unwrap();
    let err = send_mail(stream, "app.test", "app@client.test", "someone@dest.test").unwrap_err();
    assert!(err.to_string().contains("got 5"), "{err}");
    // smtp-sink opens a dump at MAIL FROM; the message text never reached it.
    assert!(!sink.messages().iter().any(|m| m.contains("Subject:")));
}

#[test]
fn an_outsider_is_limited_per_client_and_a_relay_host_is_not() {
    let sink = SmtpSink::start();
    let (relay, _) = start(
        &sink,
        "relay_hosts = { '127.0.0.1/32' }, client_limit_exceptions = { '127.0.0.1/32' },
         max_connections_per_client = 2",
    );
    let banner = |from: &str| -> (TcpStream, String) {
        use std::io::{BufRead, BufReader};
        let stream = connect_from(from.parse().unwrap(), relay.addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut line = String::new();
        BufReader::new(stream.try_clone().unwrap())
            .read_line(&mut line)
            .unwrap();
        (stream, line)
    };
    let held: Vec<_> = (0..2).map(|_| banner("127.0.0.66")).collect();
    assert!(held.iter().all(|(_, b)| b.starts_with("220")), "{held:?}");
    let (_, third) = banner("127.0.0.66");
    assert!(third.starts_with("421 4.7.0"), "{third}");
    assert!(third.contains("client_limit_exceptions"), "{third}");
    let trusted: Vec<_> = (0..5).map(|_| banner("127.0.0.1")).collect();
    assert!(
        trusted.iter().all(|(_, b)| b.starts_with("220")),
        "{trusted:?}"
    );
}
