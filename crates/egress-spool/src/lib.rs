//! A durable message spool on a plain directory.
//!
//! A message is `ID.msg` (its wire form after `DATA`: CR LF, dot-stuffed, ending
//! `CR LF . CR LF`) and `ID.env` (its [`Envelope`], JSON). What is durable when:
//!
//! 1. [`SpoolWriter::write`] appends to `ID.msg.tmp` (page cache only);
//! 2. [`SpoolWriter::commit`] fsyncs it and renames it to `ID.msg`, writes
//!    `ID.env.tmp`, fsyncs it and renames it to `ID.env`, then fsyncs the directory
//!    (three fsyncs) — only after this returns may the sender hear `250`;
//! 3. [`Spool::update`] replaces the envelope the same way (write, fsync, rename,
//!    fsync the directory), so a delivery recorded is never repeated after a crash
//!    that happens later;
//! 4. [`Spool::remove`] deletes the envelope first: a crash between the two
//!    deletions leaves an `ID.msg` without envelope, which [`Spool::open`] removes.
//!
//! An envelope's presence is what makes a message exist. Temporary files and data
//! without an envelope are what a crash left half-done; `open` deletes them.
//!
//! A plain directory is enough: messages are written once, read once or a few times,
//! and removed — no index, no transactions across messages, nothing a database would
//! add but a dependency. Rename within one directory is atomic on every POSIX file
//! system.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use serde::{Deserialize, Serialize};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Why the spool could not take or keep a message.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// Taking the message would pass `max_bytes` (or the disk is full).
    #[error("the spool is full ({used} of {max} bytes in use{})", if *.disk { "; the disk is full" } else { "" })]
    Full {
        /// Bytes in use.
        used: u64,
        /// The bound.
        max: u64,
        /// The file system itself ran out of space.
        disk: bool,
    },
    /// A file operation failed.
    #[error("spool {path}: {error}")]
    Io {
        /// The file or directory.
        path: String,
        /// What the system said.
        error: io::Error,
    },
}

fn io_error(path: &Path, error: io::Error) -> SpoolError {
    SpoolError::Io {
        path: path.display().to_string(),
        error,
    }
}

/// Where one recipient stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum RecipientState {
    /// Not delivered yet.
    Pending,
    /// The destination accepted it (its reply).
    Delivered {
        /// The destination's reply.
        reply: String,
    },
    /// It failed for good (a 5xx, or `max_age` passed).
    Failed {
        /// The reply or reason.
        reply: String,
    },
}

/// One recipient.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recipient {
    /// The address, without angle brackets.
    pub address: String,
    /// Where it stands.
    #[serde(flatten)]
    pub state: RecipientState,
}

/// The recipients of one destination domain: delivered together, retried together.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainQueue {
    /// The destination domain.
    pub domain: String,
    /// Its recipients.
    pub recipients: Vec<Recipient>,
    /// Delivery attempts so far.
    pub attempts: u32,
    /// Seconds since the epoch when the next attempt is due.
    pub next_attempt: u64,
    /// Why the last attempt did not finish it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

impl DomainQueue {
    /// Recipients still pending.
    pub fn pending(&self) -> impl Iterator<Item = &Recipient> {
        self.recipients
            .iter()
            .filter(|r| r.state == RecipientState::Pending)
    }

    /// No recipient is pending.
    pub fn is_done(&self) -> bool {
        self.pending().next().is_none()
    }
}

/// A spooled message's envelope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// The spool id (the files' stem).
    pub id: String,
    /// MAIL FROM, without angle brackets (empty: the null sender).
    pub sender: String,
    /// MAIL FROM said `BODY=8BITMIME`.
    pub body_8bit: bool,
    /// The tenant its route was resolved for, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// The message's meta values (`received_from`, …), for log records.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub meta: serde_json::Map<String, serde_json::Value>,
    /// Seconds since the epoch when it was spooled.
    pub created: u64,
    /// Recipients by destination domain.
    pub domains: Vec<DomainQueue>,
}

/// Seconds since the epoch, now.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

impl Envelope {
    /// An envelope created now, every recipient pending and due at once.
    pub fn new<D, R>(
        id: &str,
        sender: &str,
        body_8bit: bool,
        domains: impl IntoIterator<Item = (D, R)>,
    ) -> Envelope
    where
        D: Into<String>,
        R: IntoIterator,
        R::Item: Into<String>,
    {
        let now = now_secs();
        Envelope {
            id: id.to_owned(),
            sender: sender.to_owned(),
            body_8bit,
            tenant: None,
            meta: serde_json::Map::new(),
            created: now,
            domains: domains
                .into_iter()
                .map(|(domain, recipients)| DomainQueue {
                    domain: domain.into(),
                    recipients: recipients
                        .into_iter()
                        .map(|a| Recipient {
                            address: a.into(),
                            state: RecipientState::Pending,
                        })
                        .collect(),
                    attempts: 0,
                    next_attempt: now,
                    last_error: None,
                })
                .collect(),
        }
    }

    /// Every recipient is delivered or failed.
    pub fn is_done(&self) -> bool {
        self.domains.iter().all(DomainQueue::is_done)
    }
}

/// A spool directory.
pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    used: Arc<AtomicU64>,
    next: AtomicU64,
    fsyncs: Arc<AtomicU64>,
}

impl Spool {
    /// Opens (creating) `dir`, removes what a crash left half-written, and returns
    /// the spool and every message in it. `max_bytes` bounds the data held.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<(Spool, Vec<Envelope>), SpoolError> {
        fs::create_dir_all(dir).map_err(|e| io_error(dir, e))?;
        let mut envelopes = Vec::new();
        let mut used = 0;
        let entries = fs::read_dir(dir).map_err(|e| io_error(dir, e))?;
        let names: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        for path in &names {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name.ends_with(".tmp") {
                let _ = fs::remove_file(path);
            } else if let Some(id) = name.strip_suffix(".msg") {
                if !dir.join(format!("{id}.env")).exists() {
                    let _ = fs::remove_file(path);
                } else {
                    used += fs::metadata(path).map(|m| m.len()).unwrap_or(0);
                }
            } else if let Some(id) = name.strip_suffix(".env") {
                let text = fs::read_to_string(path).map_err(|e| io_error(path, e))?;
                match serde_json::from_str::<Envelope>(&text) {
                    Ok(env) if dir.join(format!("{id}.msg")).exists() => envelopes.push(env),
                    // An envelope without its data cannot be delivered: it never
                    // existed as far as a sender was told (data is committed first).
                    _ => {
                        let _ = fs::remove_file(path);
                    }
                }
            }
        }
        envelopes.sort_by(|a, b| (a.created, &a.id).cmp(&(b.created, &b.id)));
        let spool = Spool {
            dir: dir.to_owned(),
            max_bytes,
            used: Arc::new(AtomicU64::new(used)),
            next: AtomicU64::new(0),
            fsyncs: Arc::default(),
        };
        Ok((spool, envelopes))
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Bytes of message data held.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// fsync calls made so far (files and the directory), for the cost per message.
    pub fn fsyncs(&self) -> u64 {
        self.fsyncs.load(Ordering::Relaxed)
    }

    /// The bound on [`used`](Self::used).
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// A new message, under a new id.
    pub fn writer(&self) -> Result<SpoolWriter, SpoolError> {
        if self.used() >= self.max_bytes {
            return Err(self.full(false));
        }
        let id = format!(
            "{:x}{:05x}{:04x}",
            now_secs(),
            std::process::id() & 0xf_ffff,
            self.next.fetch_add(1, Ordering::Relaxed) & 0xffff
        );
        let tmp = self.dir.join(format!("{id}.msg.tmp"));
        let file = File::create(&tmp).map_err(|e| io_error(&tmp, e))?;
        Ok(SpoolWriter {
            dir: self.dir.clone(),
            id,
            tmp,
            file: Some(file),
            written: 0,
            used: self.used.clone(),
            max_bytes: self.max_bytes,
            fsyncs: self.fsyncs.clone(),
        })
    }

    fn full(&self, disk: bool) -> SpoolError {
        SpoolError::Full {
            used: self.used(),
            max: self.max_bytes,
            disk,
        }
    }

    /// The path of a message's data.
    pub fn data_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.msg"))
    }

    /// Replaces a message's envelope durably.
    pub fn update(&self, envelope: &Envelope) -> Result<(), SpoolError> {
        write_envelope(&self.dir, envelope, &self.fsyncs)?;
        sync_dir(&self.dir, &self.fsyncs)
    }

    /// Removes a message (envelope first).
    pub fn remove(&self, id: &str) -> Result<(), SpoolError> {
        let env = self.dir.join(format!("{id}.env"));
        let data = self.data_path(id);
        let size = fs::metadata(&data).map(|m| m.len()).unwrap_or(0);
        fs::remove_file(&env).map_err(|e| io_error(&env, e))?;
        let _ = fs::remove_file(&data);
        self.used
            .fetch_sub(size.min(self.used()), Ordering::Relaxed);
        sync_dir(&self.dir, &self.fsyncs)
    }
}

/// One message being written; dropped without [`commit`](Self::commit), it leaves
/// nothing behind.
pub struct SpoolWriter {
    dir: PathBuf,
    id: String,
    tmp: PathBuf,
    file: Option<File>,
    written: u64,
    used: Arc<AtomicU64>,
    max_bytes: u64,
    fsyncs: Arc<AtomicU64>,
}

impl SpoolWriter {
    /// The message's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Octets written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Appends wire-form octets. [`SpoolError::Full`] when the spool's bound (or the
    /// disk) would be passed.
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), SpoolError> {
        let used = self.used.load(Ordering::Relaxed);
        if used + self.written + bytes.len() as u64 > self.max_bytes {
            return Err(SpoolError::Full {
                used,
                max: self.max_bytes,
                disk: false,
            });
        }
        let Some(file) = self.file.as_mut() else {
            return Err(io_error(&self.tmp, io::Error::other("already committed")));
        };
        file.write_all(bytes).map_err(|e| self.error(e))?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn error(&self, e: io::Error) -> SpoolError {
        if e.kind() == io::ErrorKind::StorageFull {
            SpoolError::Full {
                used: self.used.load(Ordering::Relaxed),
                max: self.max_bytes,
                disk: true,
            }
        } else {
            io_error(&self.tmp, e)
        }
    }

    /// Makes the message durable with `envelope` (see the crate documentation for
    /// the order of writes and fsyncs). After `Ok`, it is in the spool.
    pub fn commit(mut self, envelope: &Envelope) -> Result<(), SpoolError> {
        let Some(file) = self.file.take() else {
            return Err(io_error(&self.tmp, io::Error::other("already committed")));
        };
        file.sync_all().map_err(|e| self.error(e))?;
        self.fsyncs.fetch_add(1, Ordering::Relaxed);
        drop(file);
        let data = self.dir.join(format!("{}.msg", self.id));
        fs::rename(&self.tmp, &data).map_err(|e| io_error(&data, e))?;
        if let Err(e) = write_envelope(&self.dir, envelope, &self.fsyncs)
            .and_then(|()| sync_dir(&self.dir, &self.fsyncs))
        {
            let _ = fs::remove_file(&data);
            return Err(e);
        }
        self.used.fetch_add(self.written, Ordering::Relaxed);
        Ok(())
    }
}

impl Drop for SpoolWriter {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

fn write_envelope(dir: &Path, envelope: &Envelope, fsyncs: &AtomicU64) -> Result<(), SpoolError> {
    let tmp = dir.join(format!("{}.env.tmp", envelope.id));
    let path = dir.join(format!("{}.env", envelope.id));
    let text =
        serde_json::to_vec_pretty(envelope).map_err(|e| io_error(&tmp, io::Error::other(e)))?;
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        file.write_all(&text)?;
        file.sync_all()?;
        fsyncs.fetch_add(1, Ordering::Relaxed);
        fs::rename(&tmp, &path)
    })();
    result.map_err(|e| {
        let _ = fs::remove_file(&tmp);
        io_error(&path, e)
    })
}

fn sync_dir(dir: &Path, fsyncs: &AtomicU64) -> Result<(), SpoolError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error(dir, e))?;
    fsyncs.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(id: &str) -> Envelope {
        Envelope::new(
            id,
            "a@client.test",
            false,
            [
                ("b.test", vec!["x@b.test", "y@b.test"]),
                ("c.test", vec!["z@c.test"]),
            ],
        )
    }

    #[test]
    fn a_committed_message_is_found_again_with_its_envelope_and_data() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, found) = Spool::open(dir.path(), 1 << 20).unwrap();
        assert!(found.is_empty());
        let mut w = spool.writer().unwrap();
        w.write(b"Subject: hi\r\n\r\n").unwrap();
        w.write(b"..dot\r\n.\r\n").unwrap();
        let id = w.id().to_owned();
        w.commit(&envelope(&id)).unwrap();
        assert_eq!(spool.used(), 25);
        assert_eq!(spool.fsyncs(), 3, "data, envelope, directory");
        let (again, found) = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(
            found,
            vec![envelope(&id).clone_with_created(found[0].created)]
        );
        assert_eq!(again.used(), 25);
        assert_eq!(
            fs::read(again.data_path(&id)).unwrap(),
            b"Subject: hi\r\n\r\n..dot\r\n.\r\n"
        );
        let mut env = found[0].clone();
        env.domains[1].recipients[0].state = RecipientState::Delivered {
            reply: "250 ok".into(),
        };
        again.update(&env).unwrap();
        let (_, found) = Spool::open(dir.path(), 1 << 20).unwrap();
        assert!(found[0].domains[1].is_done());
        assert!(!found[0].is_done());
        again.remove(&id).unwrap();
        assert_eq!(again.used(), 0);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    impl Envelope {
        fn clone_with_created(mut self, created: u64) -> Envelope {
            self.created = created;
            for d in &mut self.domains {
                d.next_attempt = created;
            }
            self
        }
    }

    #[test]
    fn what_a_crash_left_half_written_is_removed_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = Spool::open(dir.path(), 1 << 20).unwrap();
        let mut w = spool.writer().unwrap();
        w.write(b"partial").unwrap();
        std::mem::forget(w); // as kill -9 would: no drop
        fs::write(dir.path().join("orphan.msg"), b"data without envelope").unwrap();
        fs::write(dir.path().join("lost.env"), b"{}").unwrap();
        let (_, found) = Spool::open(dir.path(), 1 << 20).unwrap();
        assert!(found.is_empty());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_message_past_the_bound_is_refused_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = Spool::open(dir.path(), 10).unwrap();
        let mut w = spool.writer().unwrap();
        w.write(b"12345").unwrap();
        let err = w.write(b"678901").unwrap_err();
        assert!(matches!(err, SpoolError::Full { max: 10, .. }), "{err}");
        drop(w);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
        assert!(err.to_string().contains("the spool is full"));
    }
}
