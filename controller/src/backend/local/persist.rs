//! The local backend's memory across controller restarts: pid, endpoint and app of every replica
//! it started, in `<state-dir>/local-replicas.json`. On start, each record is checked (process
//! alive, command line names the same model, health answers) and the replica adopted instead of
//! being orphaned or started twice.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::process;
use crate::backend::AppDeployment;
use crate::state_file;

/// File name inside the state directory.
pub const FILE_NAME: &str = "local-replicas.json";

/// One running replica as persisted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplicaRecord {
    pub app: String,
    pub model: String,
    pub model_path: PathBuf,
    pub generation: u64,
    pub parameters: u64,
    pub memory_mb: u64,
    pub pid: u32,
    pub endpoint: String,
    pub gpu: Option<u32>,
    /// Seconds since the Unix epoch.
    pub started_at_unix: f64,
}

impl ReplicaRecord {
    /// The deployment this replica was started for.
    pub fn deployment(&self) -> AppDeployment {
        AppDeployment {
            name: self.app.clone(),
            model: self.model.clone(),
            model_path: self.model_path.clone(),
            generation: self.generation,
            parameters: self.parameters,
        }
    }

    pub fn started_at(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs_f64(self.started_at_unix.max(0.0))
    }
}

/// Seconds since the epoch of `t` (0 for times before it).
pub fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct ReplicaFile {
    replicas: Vec<ReplicaRecord>,
}

/// Records from the last run; an unreadable file is logged and treated as empty (the replicas it
/// named can only be found by their records, so nothing better can be done).
pub fn load(state_dir: &Path) -> Vec<ReplicaRecord> {
    let path = state_dir.join(FILE_NAME);
    match state_file::read_json::<ReplicaFile>(&path) {
        Ok(file) => file.map(|f| f.replicas).unwrap_or_default(),
        Err(e) => {
            tracing::error!(error = %e, "ignoring unreadable replica records");
            Vec::new()
        }
    }
}

/// Replace the records.
pub fn save(state_dir: &Path, replicas: Vec<ReplicaRecord>) -> Result<(), state_file::StateFileError> {
    state_file::write_json(&state_dir.join(FILE_NAME), &ReplicaFile { replicas })
}

/// What to do with a persisted record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Our replica, alive: adopt it (its health is checked by the supervisor).
    Adopt,
    /// Gone, or the pid now belongs to another program: forget the record.
    Forget,
}

/// Whether the process behind a record is still the replica we started.
pub fn check(record: &ReplicaRecord) -> Verdict {
    if !process::is_alive(record.pid) {
        return Verdict::Forget;
    }
    let Some(cmdline) = process::command_line(record.pid) else {
        return Verdict::Forget;
    };
    let model = record.model_path.to_string_lossy();
    if cmdline.contains(" replica ") && cmdline.contains(model.as_ref()) {
        Verdict::Adopt
    } else {
        Verdict::Forget
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(pid: u32, model_path: &str) -> ReplicaRecord {
        ReplicaRecord {
            app: "sd-x".into(),
            model: "x.safetensors".into(),
            model_path: model_path.into(),
            generation: 1,
            parameters: 1000,
            memory_mb: 10,
            pid,
            endpoint: "http://127.0.0.1:1".into(),
            gpu: None,
            started_at_unix: 1.5,
        }
    }

    #[test]
    fn records_survive_a_save_and_load() {
        let dir = tempfile::tempdir().expect("tempdir");
        let saved = vec![record(7, "/m/x.safetensors")];
        save(dir.path(), saved.clone()).expect("save");
        assert_eq!(load(dir.path()), saved);
    }

    #[test]
    fn a_dead_pid_or_a_reused_pid_is_forgotten() {
        // Our own pid is alive but is the test binary, not `sdplane replica --model …`.
        assert_eq!(
            check(&record(std::process::id(), "/m/x.safetensors")),
            Verdict::Forget
        );
        assert_eq!(check(&record(u32::MAX / 2, "/m/x.safetensors")), Verdict::Forget);
    }

    #[tokio::test]
    async fn a_live_replica_process_with_the_same_model_is_adopted() {
        // A real process whose command line looks like a replica's (`sh -c` keeps argv).
        let mut child = tokio::process::Command::new("sh")
            .args([
                "-c",
                "sleep 30; exit 0",
                "sdplane",
                "replica",
                "--model",
                "/m/x.safetensors",
            ])
            .spawn()
            .expect("spawn sh");
        let pid = child.id().expect("pid");
        // The exec may not have replaced the forked image's command line yet.
        for _ in 0..200 {
            if process::command_line(pid).is_some_and(|c| c.contains("replica")) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(
            check(&record(pid, "/m/x.safetensors")),
            Verdict::Adopt,
            "{:?}",
            process::command_line(pid)
        );
        assert_eq!(check(&record(pid, "/m/other.safetensors")), Verdict::Forget);
        child.kill().await.expect("kill");
    }
}
