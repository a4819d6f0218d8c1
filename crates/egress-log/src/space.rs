//! `min_free_space` / `min_free_inodes`: whether a local log's file system has
//! room, asked at most once a second (statvfs is a system call).

use egress_record::{LocalLogParams, MinFree};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

struct Need {
    dir: PathBuf,
    space: MinFree,
    inodes: MinFree,
}

/// The file systems the local logs write to, and what each must keep free.
pub(crate) struct FreeSpace {
    needs: Vec<Need>,
    last: Mutex<Option<(Instant, Option<String>)>>,
}

const RECHECK: Duration = Duration::from_secs(1);

impl FreeSpace {
    pub fn new<'a>(params: impl Iterator<Item = &'a LocalLogParams>) -> FreeSpace {
        FreeSpace {
            needs: params
                .map(|p| Need {
                    dir: p.log_dir.clone(),
                    space: p.min_free_space,
                    inodes: p.min_free_inodes,
                })
                .collect(),
            last: Mutex::new(None),
        }
    }

    /// Why mail should wait, if a log's file system is short.
    pub fn refusal(&self) -> Option<String> {
        if self.needs.is_empty() {
            return None;
        }
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at, answer)) = last.as_ref() {
            if at.elapsed() < RECHECK {
                return answer.clone();
            }
        }
        let answer = self.needs.iter().find_map(check);
        *last = Some((Instant::now(), answer.clone()));
        answer
    }
}

fn check(need: &Need) -> Option<String> {
    let stat = nix::sys::statvfs::statvfs(&need.dir).ok()?;
    let block = stat.fragment_size() as u64;
    let (free, total) = (
        stat.blocks_available() as u64 * block,
        stat.blocks() as u64 * block,
    );
    if !need.space.satisfied(free, total) {
        return Some(format!(
            "log directory {} is short of space ({free} bytes free, min_free_space {})",
            need.dir.display(),
            need.space
        ));
    }
    let (ifree, itotal) = (stat.files_available() as u64, stat.files() as u64);
    if !need.inodes.satisfied(ifree, itotal) {
        return Some(format!(
            "log directory {} is short of inodes ({ifree} free, min_free_inodes {})",
            need.dir.display(),
            need.inodes
        ));
    }
    None
}
