//! DKIM signing at the relay, as KumoMTA policies do it: `smtp_server_message_received`
//! with `policy-extras.dkim_sign` and a `dkim_data.toml` (a domain block and an
//! additional signature for another signing domain), the message's headers changed
//! first (`import_x_headers`, `remove_x_headers`, `prepend_header`). What smtp-sink
//! received is checked by dkimpy against the public keys made here with openssl.

mod common;

use common::Egressd;
use egress_e2e::{dkim_key, dkimpy_verify, mx_entry, swaks, SmtpSink};
use std::path::Path;
use std::process::Command;

fn key(path: &Path, ed25519: bool) -> String {
    dkim_key(path, ed25519)
}

#[test]
fn kumomta_dkim_data_signs_twice_and_dkimpy_says_pass() {
    let dir = tempfile::tempdir().unwrap();
    let rsa = dir.path().join("example.com.s1.key");
    let ed = dir.path().join("esp.e1.key");
    let rsa_record = key(&rsa, false);
    let ed_record = key(&ed, true);
    let data = dir.path().join("dkim_data.toml");
    std::fs::write(
        &data,
        format!(
            "[base]
selector = \"s1\"
headers = [\"From\", \"To\", \"Subject\", \"Date\", \"X-Signed-By\"]
additional_signatures = [\"esp\"]
over_sign = true
expiration = 86400

[domain.\"example.com\"]
filename = \"{rsa}\"
header_canonicalization = \"relaxed\"
body_canonicalization = \"simple\"

[signature.\"esp\"]
domain = \"esp.example.org\"
selector = \"e1\"
algo = \"ed25519\"
filename = \"{ed}\"
policy = \"Always\"
",
            rsa = rsa.display(),
            ed = ed.display()
        ),
    )
    .unwrap();
    let sink = SmtpSink::start();
    let policy = format!(
        "local dkim_sign = require 'policy-extras.dkim_sign'
         local signer = dkim_sign:setup {{ '{data}' }}
         kumo.on('init', function()
           kumo.start_esmtp_listener {{ listen = '{{listen}}' }}
         end)
         kumo.on('smtp_server_message_received', function(msg)
           msg:import_x_headers {{ 'x-campaign' }}
           msg:remove_x_headers {{ 'x-secret' }}
           msg:prepend_header('X-Signed-By', 'egressd for ' .. msg:from_header().domain)
           msg:prepend_header('X-Campaign-Seen', msg:get_meta('x_campaign'))
           signer(msg)
         end)
         kumo.on('get_queue_config', function(domain)
           return kumo.make_queue_config {{ egress_pool = 'main', protocol = {{ smtp = {{ mx_list = {{ '{mx}' }} }} }} }}
         end)
         {pool}",
        data = data.display(),
        mx = mx_entry(sink.addr),
        pool = egress_e2e::IP2_POOL,
    );
    let d = Egressd::start(&policy);
    let sent = swaks(
        d.addr,
        "someone@example.net",
        &[
            "--from",
            "news@example.com",
            "--header",
            "From: News <news@example.com>",
            "--header",
            "X-Campaign: dec",
            "--header",
            "X-Secret: internal",
            "--body",
            "Hello there,\n\nthe news.\n",
        ],
    );
    assert!(sent.ok, "{}\n{}", sent.transcript, d.log());
    let got = sink.wait_for(1);
    // smtp-sink stores lines with LF; the wire had CR LF.
    let message = got[0].replace("\r\n", "\n").replace('\n', "\r\n");
    assert!(message.contains("X-Campaign-Seen: dec\r\n"), "{message}");
    assert!(
        message.contains("X-Signed-By: egressd for example.com\r\n"),
        "{message}"
    );
    assert!(!message.contains("X-Secret"), "{message}");
    assert!(
        message.contains("X-Campaign: dec"),
        "import keeps the header: {message}"
    );
    let verdict = dkimpy_verify(
        message.as_bytes(),
        &[
            ("s1._domainkey.example.com", &rsa_record),
            ("e1._domainkey.esp.example.org", &ed_record),
        ],
    );
    assert_eq!(verdict, "pass pass", "{message}");
    let unfolded = message.replace("\r\n\t", "").replace("\r\n ", "");
    assert!(unfolded.contains("d=example.com; s=s1;"), "{unfolded}");
    assert!(
        unfolded.contains("a=ed25519-sha256; c=relaxed/relaxed; d=esp.example.org; s=e1;"),
        "{unfolded}"
    );
    assert!(unfolded.contains("c=relaxed/simple"), "{unfolded}");
    assert!(unfolded.contains("x="), "expiration: {unfolded}");
}

#[test]
fn a_rejecting_handler_refuses_the_message_and_nothing_leaves() {
    let sink = SmtpSink::start();
    let policy = format!(
        "kumo.on('init', function()
           kumo.start_esmtp_listener {{ listen = '{{listen}}' }}
         end)
         kumo.on('smtp_server_message_received', function(msg)
           if msg:get_first_named_header_value('Subject') == 'spam' then
             kumo.reject(550, '5.7.1 not this one')
           end
         end)
         kumo.on('get_queue_config', function(domain)
           return kumo.make_queue_config {{ egress_pool = 'main', protocol = {{ smtp = {{ mx_list = {{ '{mx}' }} }} }} }}
         end)
         {pool}",
        mx = mx_entry(sink.addr),
        pool = egress_e2e::IP2_POOL,
    );
    let d = Egressd::start(&policy);
    let refused = swaks(d.addr, "a@example.net", &["--header", "Subject: spam"]);
    assert!(
        refused.has_reply("550 5.7.1 not this one"),
        "{}",
        refused.transcript
    );
    let fine = swaks(d.addr, "a@example.net", &["--header", "Subject: ham"]);
    assert!(fine.ok, "{}", fine.transcript);
    let got = sink.wait_for(1);
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(sink.messages().len(), 1);
    assert!(got[0].contains("Subject: ham"));
}

#[test]
fn a_spooled_message_is_signed_once_for_every_domain_with_the_signer_api() {
    let dir = tempfile::tempdir().unwrap();
    let pem = dir.path().join("k.pem");
    let record = key(&pem, false);
    let spool = tempfile::tempdir().unwrap();
    let (a, b) = (SmtpSink::start(), SmtpSink::start());
    let policy = format!(
        "kumo.on('init', function()
           kumo.start_esmtp_listener {{ listen = '{{listen}}' }}
           kumo.define_spool {{ name = 'data', path = '{spool}', max_spool_bytes = 1048576 }}
         end)
         kumo.on('smtp_server_message_received', function(msg)
           local signer = kumo.dkim.rsa_sha256_signer {{
             domain = msg:from_header().domain, selector = 's1',
             headers = {{ 'From', 'To', 'Subject' }}, key = '{pem}',
             header_canonicalization = 'Simple', body_canonicalization = 'Simple',
           }}
           msg:dkim_sign(signer)
         end)
         local MX = {{ ['a.test'] = '{a}', ['b.test'] = '{b}' }}
         kumo.on('get_queue_config', function(domain)
           return kumo.make_queue_config {{ egress_pool = 'main', protocol = {{ smtp = {{ mx_list = {{ MX[domain] }} }} }} }}
         end)
         {pool}",
        spool = spool.path().display(),
        pem = pem.display(),
        a = mx_entry(a.addr),
        b = mx_entry(b.addr),
        pool = egress_e2e::IP2_POOL,
    );
    let d = Egressd::start(&policy);
    let sent = swaks(
        d.addr,
        "x@a.test,y@b.test",
        &[
            "--from",
            "news@example.com",
            "--header",
            "From: news@example.com",
            "--body",
            ".dot first\n",
        ],
    );
    assert!(sent.ok, "{}\n{}", sent.transcript, d.log());
    for sink in [&a, &b] {
        let got = sink.wait_for(1);
        let message = got[0].replace("\r\n", "\n").replace('\n', "\r\n");
        assert_eq!(message.matches("DKIM-Signature:").count(), 1, "{message}");
        assert!(
            message.contains("\r\n.dot first\r\n"),
            "unstuffed again: {message}"
        );
        let verdict = dkimpy_verify(
            message.as_bytes(),
            &[("s1._domainkey.example.com", &record)],
        );
        assert_eq!(verdict, "pass", "{message}");
    }
}

/// 50 clients at once, each a 10 MB message, through `smtp_server_message_received`.
const FIFTY_BIG: &str = r#"
import smtplib, sys, threading
host, port, n, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
body = 'From: news@example.com\r\nTo: x@example.net\r\nSubject: big\r\n\r\n' + ('x' * 998 + '\r\n') * (size // 1000)
errors = []
def send(i):
    try:
        s = smtplib.SMTP(host, port, timeout=300)
        s.sendmail('news@example.com', ['r%d@example.net' % i], body)
        s.quit()
    except Exception as e:
        errors.append(repr(e))
threads = [threading.Thread(target=send, args=(i,)) for i in range(n)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(len(errors), errors[:3])
"#;

/// Peak resident memory of `pid`, in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}

#[test]
fn fifty_ten_megabyte_messages_at_once_stay_within_memory() {
    let dir = tempfile::tempdir().unwrap();
    let pem = dir.path().join("k.pem");
    key(&pem, false);
    let sink = SmtpSink::start_discarding();
    let policy = format!(
        "kumo.on('init', function()
           kumo.start_esmtp_listener {{ listen = '{{listen}}', max_message_size = 20000000 }}
         end)
         kumo.on('smtp_server_message_received', function(msg)
           msg:dkim_sign(kumo.dkim.rsa_sha256_signer {{
             domain = 'example.com', selector = 's1', headers = {{ 'From', 'Subject' }}, key = '{pem}',
           }})
         end)
         kumo.on('get_queue_config', function(domain)
           return kumo.make_queue_config {{ egress_pool = 'main', protocol = {{ smtp = {{ mx_list = {{ '{mx}' }} }} }} }}
         end)
         {pool}",
        pem = pem.display(),
        mx = mx_entry(sink.addr),
        pool = egress_e2e::IP2_POOL,
    );
    let d = Egressd::start(&policy);
    let (clients, size) = (50u64, 10_000_000u64);
    let out = Command::new(egress_e2e::require("python3"))
        .args(["-c", FIFTY_BIG])
        .arg(d.addr.ip().to_string())
        .arg(d.addr.port().to_string())
        .arg(clients.to_string())
        .arg(size.to_string())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.starts_with("0 "),
        "{said}{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        d.log()
    );
    // Held past 1 MiB in files; whole in memory only as many at once as cores,
    // each a few copies (text, signed text, DATA's stuffing) while it is worked on.
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get()) as u64;
    let threshold = 1024 * 1024;
    let margin = 96 * 1024 * 1024 + cores * 6 * size;
    let peak = peak_rss(d.pid());
    let bound = clients * threshold + margin;
    eprintln!(
        "egressd peak RSS {} MiB for {clients} x {} MB at once (bound {} MiB)",
        peak >> 20,
        size / 1_000_000,
        bound >> 20
    );
    assert!(
        peak < bound,
        "peak RSS {} MiB > {} MiB",
        peak >> 20,
        bound >> 20
    );
    // All in memory would have been at least this.
    assert!(bound < clients * size);
}
