//! DATA when the policy acts on each message (`smtp_server_message_received`:
//! DKIM signing, headers added or removed, meta set): our 354 at once, the whole
//! message read (unstuffed, our `Received:` first; past 1 MiB into a file, and
//! only as many messages whole in memory at once as there are cores) and handed
//! to the policy, and
//! only then sent on — to the destination session the RCPTs opened (DATA with
//! the text dot-stuffed again, or BDAT), or into the spool. A policy's
//! `kumo.reject(code, text)` is the client's reply and nothing leaves.
//!
//! Decided: the route was chosen at RCPT — the client already has the
//! destination's replies — so meta the handler sets (`tenant`, `campaign`,
//! `queue` included) goes with the message into its log records and the spool's
//! envelope, but does not send it elsewhere.

use super::body::{self, BodySink, Trace};
use super::transaction::Transaction;
use super::transport::{Conn, Ended};
use super::Listener;
use crate::outbound::Context;
use crate::report::Origin;
use egress_policy::MessageInFlight;
use egress_smtp::Reply;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};

/// A message is held in memory up to this size while it is read; past it, in a
/// file, so many large messages arriving at once cost disk, not memory.
const IN_MEMORY: usize = 1024 * 1024;

/// Messages in memory whole at once (read back from their files, in the policy's
/// hands, on their way out): as many as the cores, which is as many as the
/// policy could work on at once anyway.
fn whole_at_once() -> &'static tokio::sync::Semaphore {
    static PERMITS: std::sync::OnceLock<tokio::sync::Semaphore> = std::sync::OnceLock::new();
    PERMITS.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        tokio::sync::Semaphore::new(cores)
    })
}

/// The message held whole, as text: in memory, or in a file once large.
struct Hold {
    text: Vec<u8>,
    spill: Option<Spill>,
    failed: Option<std::io::Error>,
}

/// A file a large message waits in; removed when dropped.
struct Spill {
    path: std::path::PathBuf,
    file: std::fs::File,
}

impl Spill {
    fn create() -> std::io::Result<Spill> {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "egress-held-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let path = std::env::temp_dir().join(name);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        Ok(Spill { path, file })
    }
}

impl Drop for Spill {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Hold {
    /// The whole text, read back from its file when it was spilled.
    async fn take(&mut self) -> std::io::Result<Vec<u8>> {
        let Some(spill) = self.spill.take() else {
            return Ok(std::mem::take(&mut self.text));
        };
        tokio::task::spawn_blocking(move || {
            use std::io::{Read, Seek};
            let mut spill = spill;
            let mut text = Vec::new();
            spill.file.rewind()?;
            spill.file.read_to_end(&mut text)?;
            Ok(text)
        })
        .await
        .map_err(std::io::Error::other)?
    }
}

impl BodySink for Hold {
    fn unstuffed(&self) -> bool {
        true
    }

    async fn put(&mut self, bytes: &[u8], _last: bool) {
        use std::io::Write;
        if self.failed.is_some() {
            return;
        }
        if self.spill.is_none() && self.text.len() + bytes.len() > IN_MEMORY {
            match Spill::create() {
                Ok(mut spill) => match spill.file.write_all(&self.text) {
                    Ok(()) => {
                        self.text = Vec::new();
                        self.spill = Some(spill);
                    }
                    Err(e) => self.failed = Some(e),
                },
                Err(e) => self.failed = Some(e),
            }
        }
        // Page-cache writes, as the spool's are.
        match self.spill.as_mut() {
            Some(spill) => {
                if let Err(e) = spill.file.write_all(bytes) {
                    self.failed = Some(e);
                }
            }
            None => self.text.extend_from_slice(bytes),
        }
    }

    fn discard(&mut self) {
        self.text = Vec::new();
        self.spill = None;
    }
}

/// DATA for `t`, through the policy's `smtp_server_message_received`.
pub async fn data<S: AsyncRead + AsyncWrite + Unpin>(
    ctx: &Arc<Context>,
    inbound: &Listener,
    conn: &mut Conn<S>,
    t: Transaction,
    trace: Trace<'_>,
) -> Result<Reply, Ended> {
    conn.reply(&body::go_ahead());
    let mut hold = Hold {
        text: Vec::new(),
        spill: None,
        failed: None,
    };
    let mut t = match body::receive_whole(inbound, conn, t, &trace, &mut hold).await {
        Ok(t) => t,
        Err(answered) => return answered,
    };
    // Whole in memory from here until it has left: a bounded number at once.
    let _whole = whole_at_once().acquire().await;
    let text = match hold.failed.take() {
        Some(e) => Err(e),
        None => hold.take().await,
    };
    let text = match text {
        Ok(text) => text,
        Err(e) => {
            let reply = Reply::new(451, [4, 3, 0], format!("cannot hold the message: {e}"));
            t.log.decide(&reply, Origin::Local, ".");
            t.end("could not hold the message");
            return Ok(reply);
        }
    };
    let recipients: Vec<String> = t
        .legs
        .iter()
        .flat_map(|l| l.confirmed.iter().chain(&l.deferred).cloned())
        .collect();
    let meta = t
        .log
        .recording
        .as_ref()
        .map(|r| (*r.message.meta).clone())
        .unwrap_or_default();
    let message = MessageInFlight {
        id: t.log.id.clone(),
        sender: t.from.clone(),
        recipients,
        meta,
        data: text,
    };
    let message = match ctx.policy.message_received(message, trace.conn_meta).await {
        Ok(message) => message,
        Err(e) => {
            let reply = match e.rejection() {
                Some(r) => rejection_reply(r),
                None => Reply::new(
                    451,
                    [4, 3, 0],
                    format!("smtp_server_message_received failed: {e}"),
                ),
            };
            t.log.note(&format!("smtp_server_message_received: {e}"));
            t.log.decide(&reply, Origin::Local, ".");
            t.end("refused by the policy");
            return Ok(reply);
        }
    };
    t.log.size = message.data.len() as u64;
    if let Some(rec) = t.log.recording.as_mut() {
        rec.message_changed(&message.data, message.meta.clone());
    }
    if t.is_spooled() {
        let (t, delivery, mut sink, id) = match body::open_spool(inbound, t) {
            Ok(opened) => opened,
            Err(reply) => return Ok(reply),
        };
        sink.put(&egress_smtp::stuff(&message.data), true).await;
        return Ok(body::commit_spool(ctx, t, delivery, sink, id).await);
    }
    let (t, mut sink) = match body::open_forward(t).await {
        Ok(opened) => opened,
        Err(reply) => return Ok(reply),
    };
    let wire = match sink.unstuffed() {
        true => message.data,
        false => egress_smtp::stuff(&message.data),
    };
    sink.put(&wire, true).await;
    Ok(body::finish_forward(ctx, t, sink).await)
}

/// `kumo.reject(code, text)` as a reply: its enhanced code, when the text begins
/// with one, kept as such.
fn rejection_reply(r: &egress_policy::Rejection) -> Reply {
    let (first, rest) = r.text.split_once(' ').unwrap_or((&r.text, ""));
    let esc: Option<[u8; 3]> = {
        let parts: Vec<u8> = first.split('.').filter_map(|p| p.parse().ok()).collect();
        match parts.as_slice() {
            [a @ (4 | 5), b, c] if first.split('.').count() == 3 => Some([*a, *b, *c]),
            _ => None,
        }
    };
    match esc {
        Some(esc) => Reply::new(r.code, esc, rest),
        None => Reply {
            code: r.code,
            esc: None,
            lines: vec![r.text.clone()],
        },
    }
}
