//! One zstd log segment, named and finished as KumoMTA's are: the UTC time it was
//! opened (`YYYYMMDD-HHMMSS.fffffffff`, so names sort in time order) and the
//! type's suffix; a finished segment loses its write permission — what
//! KumoMTA's tailer takes to mean "complete".

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

/// A segment being written.
pub struct Segment {
    encoder: Option<zstd::Encoder<'static, File>>,
    /// Its file.
    pub path: PathBuf,
    /// Uncompressed octets written.
    pub written: u64,
    /// When it is finished whatever its size (`max_segment_duration`).
    pub expires: Option<Instant>,
}

impl Segment {
    /// Opens a new segment in `dir` (made if missing) and writes `header` first.
    pub fn open(
        dir: &Path,
        suffix: Option<&str>,
        level: i32,
        expires: Option<Instant>,
        header: &str,
    ) -> io::Result<Segment> {
        let mut name = segment_name(SystemTime::now());
        if let Some(suffix) = suffix {
            name.push_str(suffix);
        }
        let path = dir.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let file = OpenOptions::new().append(true).create(true).open(&path)?;
        let encoder = zstd::Encoder::new(file, level)?;
        let mut segment = Segment {
            encoder: Some(encoder),
            path,
            written: 0,
            expires,
        };
        if !header.is_empty() {
            segment.write(header.as_bytes())?;
        }
        Ok(segment)
    }

    /// Appends uncompressed octets.
    pub fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self.encoder.as_mut() {
            Some(encoder) => encoder.write_all(bytes)?,
            None => return Err(io::Error::other("segment already finished")),
        }
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// Ends the zstd frame, flushes, and marks the file complete.
    pub fn finish(mut self) -> io::Result<()> {
        self.finish_in_place()
    }

    fn finish_in_place(&mut self) -> io::Result<()> {
        if let Some(encoder) = self.encoder.take() {
            let file = encoder.finish()?;
            file.sync_data()?;
            mark_done(&self.path)?;
        }
        Ok(())
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        if let Err(e) = self.finish_in_place() {
            tracing::error!(segment = %self.path.display(), "could not finish log segment: {e}");
        }
    }
}

/// KumoMTA's segment name for a segment opened at `t` (UTC).
pub fn segment_name(t: SystemTime) -> String {
    // "2023-03-06T02:28:11.123456789Z" → "20230306-022811.123456789"
    let stamp = humantime::format_rfc3339_nanos(t).to_string();
    let date: String = stamp[..10].chars().filter(|c| *c != '-').collect();
    let time: String = stamp[11..19].chars().filter(|c| *c != ':').collect();
    let fraction = &stamp[19..stamp.len() - 1];
    format!("{date}-{time}{fraction}")
}

/// Removes the write permission: the segment is complete.
pub fn mark_done(path: &Path) -> io::Result<()> {
    let mut perms = std::fs::metadata(path)?.permissions();
    perms.set_readonly(true);
    std::fs::set_permissions(path, perms)
}

/// At start, what an earlier run left writable is complete: it will never be
/// written again (KumoMTA does the same).
pub fn mark_existing_done(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let hidden = entry.file_name().to_string_lossy().starts_with('.');
        if !hidden && entry.file_type().map(|t| t.is_file()).unwrap_or(false) {
            let _ = mark_done(&entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn names_sort_by_time() {
        let t = UNIX_EPOCH + Duration::from_millis(1_678_069_691_250);
        assert_eq!(segment_name(t), "20230306-022811.250000000");
    }

    #[test]
    fn a_finished_segment_is_readable_and_read_only() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Segment::open(dir.path(), Some("_recv"), 0, None, "h\n").unwrap();
        s.write(b"{\"a\":1}\n").unwrap();
        let path = s.path.clone();
        assert!(path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .ends_with("_recv"));
        s.finish().unwrap();
        let mut text = String::new();
        zstd::Decoder::new(File::open(&path).unwrap())
            .unwrap()
            .read_to_string(&mut text)
            .unwrap();
        assert_eq!(text, "h\n{\"a\":1}\n");
        assert!(std::fs::metadata(&path).unwrap().permissions().readonly());
    }
}
