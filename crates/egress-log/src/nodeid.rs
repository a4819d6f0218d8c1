//! The node's UUID, stable across restarts: KumoMTA's `KUMO_NODE_ID` (the id
//! itself) and `KUMO_NODE_ID_PATH` (a file holding it) are honoured, so a node
//! moved from KumoMTA keeps its id; otherwise `STATE_DIR/nodeid`, made once.

use crate::LogError;
use std::path::{Path, PathBuf};

/// The node id: from the environment, else read from (or first written to)
/// `state_dir/nodeid`.
pub fn node_id(state_dir: &Path) -> Result<String, LogError> {
    if let Some(id) = std::env::var_os("KUMO_NODE_ID") {
        let id = id.to_string_lossy().trim().to_owned();
        return parse(&id).ok_or_else(|| LogError::NodeId {
            path: PathBuf::from("$KUMO_NODE_ID"),
            problem: format!("{id:?} is not a UUID"),
        });
    }
    let path = match std::env::var_os("KUMO_NODE_ID_PATH") {
        Some(p) => PathBuf::from(p),
        None => state_dir.join("nodeid"),
    };
    let fail = |problem: String| LogError::NodeId {
        path: path.clone(),
        problem,
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            parse(text.trim()).ok_or_else(|| fail(format!("holds {:?}, not a UUID", text.trim())))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id = uuid::Uuid::new_v4().to_string();
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| fail(e.to_string()))?;
            }
            // Written whole then renamed: a crash never leaves half an id.
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, format!("{id}\n"))
                .and_then(|()| std::fs::rename(&tmp, &path))
                .map_err(|e| fail(e.to_string()))?;
            Ok(id)
        }
        Err(e) => Err(fail(e.to_string())),
    }
}

fn parse(text: &str) -> Option<String> {
    uuid::Uuid::parse_str(text).ok().map(|u| u.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_once_then_kept() {
        let dir = tempfile::tempdir().unwrap();
        let first = node_id(dir.path()).unwrap();
        assert_eq!(first.len(), 36);
        assert_eq!(node_id(dir.path()).unwrap(), first);
        std::fs::write(dir.path().join("nodeid"), "garbage").unwrap();
        let err = node_id(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("nodeid") && err.contains("not a UUID"),
            "{err}"
        );
    }
}
