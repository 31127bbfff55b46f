//! JSON files in the controller's state directory, written atomically (temp file in the same
//! directory, fsync, rename) so a crash mid-write leaves the previous version, never half a file.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Why a state file could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("state file {path}: {message}")]
pub struct StateFileError {
    pub path: PathBuf,
    pub message: String,
}

fn err(path: &Path, message: impl std::fmt::Display) -> StateFileError {
    StateFileError {
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}

/// Write `value` as pretty JSON to `path`, replacing it atomically.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), StateFileError> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| err(path, format!("cannot create directory: {e}")))?;
    let json = serde_json::to_vec_pretty(value).map_err(|e| err(path, e))?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("state");
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(&json)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        err(path, e)
    })
}

/// Read `path` as JSON; `Ok(None)` when it does not exist yet.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, StateFileError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| err(path, e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(err(path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_json_reads_back_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("nested").join("apps.json");
        write_json(&path, &vec![1, 2, 3]).expect("write");
        write_json(&path, &vec![4]).expect("overwrite");
        assert_eq!(read_json::<Vec<i32>>(&path).expect("read"), Some(vec![4]));
        let names: Vec<_> = std::fs::read_dir(path.parent().expect("parent"))
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("apps.json")]);
    }

    #[test]
    fn missing_file_is_none_and_garbage_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("apps.json");
        assert_eq!(read_json::<Vec<i32>>(&path).expect("read"), None);
        std::fs::write(&path, b"{not json").expect("write");
        assert!(read_json::<Vec<i32>>(&path).is_err());
    }
}
