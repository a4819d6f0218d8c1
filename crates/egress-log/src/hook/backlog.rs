//! A hook's durable backlog: records are appended to numbered segment files as
//! they are taken, and a separate cursor says how far the endpoint has
//! acknowledged. A record is on disk (in the page cache: safe from `kill -9`)
//! before its hook's thread takes the next; the files are synced at most 100 ms
//! later (safe from a power loss from then on).
//!
//! Layout of `DIR`: `NNNNNNNNNNNNNNNN.log` segments of frames `LEN\nBYTES`, and
//! `acked` — `SEQ OFFSET`, the first frame not yet acknowledged, replaced by
//! rename so it is never half-written. Segments wholly before the cursor are
//! removed. A frame cut short by a crash is never read (its length says more
//! than the file holds) and a new run always writes a new segment.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A segment is left for the next past this size.
const SEGMENT_SIZE: u64 = 16 * 1024 * 1024;
/// The longest appended data stays unsynced.
pub const SYNC_EVERY: Duration = Duration::from_millis(100);

/// Where the next unacknowledged frame is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cursor {
    pub seq: u64,
    pub offset: u64,
}

/// Appends (the hook's thread).
pub struct Writer {
    dir: PathBuf,
    seq: u64,
    file: File,
    len: u64,
    unsynced_since: Option<Instant>,
}

/// Reads and acknowledges (the sender).
pub struct Reader {
    dir: PathBuf,
    cursor: Cursor,
    /// The segment being read, kept open between reads that follow on.
    open: Option<Open>,
}

struct Open {
    seq: u64,
    /// Where the next frame starts (the reader is exactly there).
    at: u64,
    reader: BufReader<File>,
}

/// Opens the backlog in `dir`: the writer (a new segment), the reader at the
/// acknowledged cursor, and how many records wait.
pub fn open(dir: &Path) -> io::Result<(Writer, Reader, u64)> {
    std::fs::create_dir_all(dir)?;
    let seqs = segments(dir)?;
    let cursor = read_cursor(dir)?.unwrap_or(Cursor {
        seq: seqs.first().copied().unwrap_or(0),
        offset: 0,
    });
    let mut reader = Reader {
        dir: dir.to_owned(),
        cursor,
        open: None,
    };
    reader.remove_before(cursor.seq)?;
    let pending = reader.count()?;
    let seq = seqs.last().map(|s| s + 1).unwrap_or(0).max(cursor.seq);
    let writer = Writer::create(dir, seq)?;
    Ok((writer, reader, pending))
}

fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:016}.log"))
}

fn segments(dir: &Path) -> io::Result<Vec<u64>> {
    let mut seqs: Vec<u64> = std::fs::read_dir(dir)?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            name.strip_suffix(".log")?.parse().ok()
        })
        .collect();
    seqs.sort_unstable();
    Ok(seqs)
}

fn read_cursor(dir: &Path) -> io::Result<Option<Cursor>> {
    match std::fs::read_to_string(dir.join("acked")) {
        Ok(text) => {
            let mut parts = text.split_whitespace().map(str::parse::<u64>);
            match (parts.next(), parts.next()) {
                (Some(Ok(seq)), Some(Ok(offset))) => Ok(Some(Cursor { seq, offset })),
                _ => Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{}: expected \"SEQ OFFSET\", got {text:?}",
                        dir.join("acked").display()
                    ),
                )),
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

impl Writer {
    fn create(dir: &Path, seq: u64) -> io::Result<Writer> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(segment_path(dir, seq))?;
        let len = file.metadata()?.len();
        Ok(Writer {
            dir: dir.to_owned(),
            seq,
            file,
            len,
            unsynced_since: None,
        })
    }

    /// Appends records (one write for all of them).
    pub fn append(&mut self, records: &[Vec<u8>]) -> io::Result<()> {
        if self.len >= SEGMENT_SIZE {
            self.sync()?;
            *self = Writer::create(&self.dir, self.seq + 1)?;
        }
        let mut buf = Vec::with_capacity(records.iter().map(|r| r.len() + 12).sum());
        for r in records {
            buf.extend_from_slice(format!("{}\n", r.len()).as_bytes());
            buf.extend_from_slice(r);
        }
        self.file.write_all(&buf)?;
        self.len += buf.len() as u64;
        self.unsynced_since.get_or_insert_with(Instant::now);
        Ok(())
    }

    /// Whether unsynced data is older than [`SYNC_EVERY`].
    pub fn sync_due(&self) -> bool {
        self.unsynced_since
            .is_some_and(|t| t.elapsed() >= SYNC_EVERY)
    }

    pub fn sync(&mut self) -> io::Result<()> {
        if self.unsynced_since.take().is_some() {
            self.file.sync_data()?;
        }
        Ok(())
    }
}

impl Reader {
    /// Up to `max` records from the cursor, and the cursor after them.
    pub fn peek(&mut self, max: usize) -> io::Result<(Vec<Vec<u8>>, Cursor)> {
        self.peek_from(self.cursor, max)
    }

    /// Up to `max` records from `from` (at or after the cursor: records read
    /// already and not yet acknowledged are skipped), and the cursor after them.
    pub fn peek_from(&mut self, from: Cursor, max: usize) -> io::Result<(Vec<Vec<u8>>, Cursor)> {
        let mut out = Vec::new();
        let mut cursor = from;
        let mut listed: Option<Vec<u64>> = None;
        while out.len() < max {
            cursor.offset = self.read_from(cursor, max - out.len(), &mut out)?;
            if out.len() >= max {
                break;
            }
            // A segment with a later one after it is complete: go on to the next.
            let seqs = match &listed {
                Some(s) => s,
                None => listed.insert(segments(&self.dir)?),
            };
            match seqs.iter().find(|s| **s > cursor.seq) {
                Some(next) => {
                    cursor = Cursor {
                        seq: *next,
                        offset: 0,
                    }
                }
                None => break,
            }
        }
        Ok((out, cursor))
    }

    /// Reads frames of `cursor`'s segment from its offset (reusing the open file
    /// when it is already there); the offset after them.
    fn read_from(&mut self, cursor: Cursor, max: usize, out: &mut Vec<Vec<u8>>) -> io::Result<u64> {
        let reusable = self
            .open
            .as_ref()
            .is_some_and(|o| o.seq == cursor.seq && o.at == cursor.offset);
        if !reusable {
            self.open = None;
            let file = match File::open(segment_path(&self.dir, cursor.seq)) {
                Ok(file) => file,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(cursor.offset),
                Err(e) => return Err(e),
            };
            let mut reader = BufReader::new(file);
            reader.seek(SeekFrom::Start(cursor.offset))?;
            self.open = Some(Open {
                seq: cursor.seq,
                at: cursor.offset,
                reader,
            });
        }
        let Some(open) = self.open.as_mut() else {
            return Ok(cursor.offset);
        };
        let (at, clean) = read_frames(&mut open.reader, cursor.offset, max, out)?;
        open.at = at;
        if !clean {
            // A frame still being written was half read: read it again from its
            // start next time.
            self.open = None;
        }
        Ok(at)
    }

    /// The endpoint took everything before `cursor`.
    pub fn ack(&mut self, cursor: Cursor) -> io::Result<()> {
        let tmp = self.dir.join("acked.tmp");
        std::fs::write(&tmp, format!("{} {}\n", cursor.seq, cursor.offset))?;
        std::fs::rename(&tmp, self.dir.join("acked"))?;
        let old = self.cursor.seq;
        self.cursor = cursor;
        if cursor.seq > old {
            self.remove_before(cursor.seq)?;
        }
        Ok(())
    }

    fn remove_before(&mut self, seq: u64) -> io::Result<()> {
        for s in segments(&self.dir)? {
            if s < seq {
                std::fs::remove_file(segment_path(&self.dir, s))?;
            }
        }
        Ok(())
    }

    fn count(&self) -> io::Result<u64> {
        let mut n = 0;
        let mut probe = Reader {
            dir: self.dir.clone(),
            cursor: self.cursor,
            open: None,
        };
        loop {
            let (batch, next) = probe.peek(4096)?;
            if batch.is_empty() {
                return Ok(n);
            }
            n += batch.len() as u64;
            probe.cursor = next;
        }
    }
}

/// Reads up to `max` whole frames from `reader` (at `offset`) into `out`: the
/// offset after them, and whether the reader is exactly there (false when a
/// frame cut short was read into).
fn read_frames(
    reader: &mut BufReader<File>,
    offset: u64,
    max: usize,
    out: &mut Vec<Vec<u8>>,
) -> io::Result<(u64, bool)> {
    let mut at = offset;
    let mut taken = 0;
    let mut line = String::new();
    while taken < max {
        line.clear();
        let n = reader.read_line(&mut line)?;
        if n == 0 {
            break;
        }
        if !line.ends_with('\n') {
            return Ok((at, false));
        }
        let Ok(len) = line.trim_end().parse::<usize>() else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("backlog frame at offset {at} has no length"),
            ));
        };
        let mut record = vec![0; len];
        match reader.read_exact(&mut record) {
            Ok(()) => {}
            // Cut short (a crash, or still being written): not a record yet.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok((at, false)),
            Err(e) => return Err(e),
        }
        at += (n + len) as u64;
        out.push(record);
        taken += 1;
    }
    Ok((at, true))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acknowledged_records_are_not_read_again_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (mut w, mut r, pending) = open(dir.path()).unwrap();
        assert_eq!(pending, 0);
        w.append(&[b"one\n".to_vec(), b"two\n".to_vec(), b"three\n".to_vec()])
            .unwrap();
        let (batch, next) = r.peek(2).unwrap();
        assert_eq!(batch, vec![b"one\n".to_vec(), b"two\n".to_vec()]);
        r.ack(next).unwrap();
        drop((w, r));
        let (mut w, mut r, pending) = open(dir.path()).unwrap();
        assert_eq!(pending, 1);
        w.append(&[b"four\n".to_vec()]).unwrap();
        let (batch, _) = r.peek(10).unwrap();
        assert_eq!(batch, vec![b"three\n".to_vec(), b"four\n".to_vec()]);
    }

    #[test]
    fn a_frame_cut_short_is_not_a_record() {
        let dir = tempfile::tempdir().unwrap();
        let (mut w, mut r, _) = open(dir.path()).unwrap();
        w.append(&[b"whole\n".to_vec()]).unwrap();
        w.file.write_all(b"40\npartial").unwrap();
        let (batch, _) = r.peek(10).unwrap();
        assert_eq!(batch, vec![b"whole\n".to_vec()]);
        drop((w, r));
        let (mut w, mut r, pending) = open(dir.path()).unwrap();
        assert_eq!(pending, 1);
        w.append(&[b"next\n".to_vec()]).unwrap();
        let (batch, _) = r.peek(10).unwrap();
        assert_eq!(batch, vec![b"whole\n".to_vec(), b"next\n".to_vec()]);
    }
}
