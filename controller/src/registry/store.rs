//! The registry on disk: `<state-dir>/apps.json`, every deployed app with its spec, resolved
//! model, generation and cold-start history. Written atomically after every change, read once at
//! start, so a restart (or crash) of the controller loses no app.

use std::path::{Path, PathBuf};

use sdplane_wire::admin::AppSpec;
use serde::{Deserialize, Serialize};

use crate::cold_start::ColdStartStats;
use crate::state_file::{self, StateFileError};

/// File name inside the state directory.
pub const FILE_NAME: &str = "apps.json";

/// One deployed app as persisted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppRecord {
    pub name: String,
    pub spec: AppSpec,
    /// Canonical path of the model file.
    pub model_path: PathBuf,
    /// Weight elements (from detection), for memory estimates.
    pub parameters: u64,
    /// Bumped on every (re)deploy.
    pub generation: u64,
    #[serde(default)]
    pub cold_start: ColdStartStats,
}

/// The whole file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RegistryFile {
    /// Next generation number to hand out (monotonic across apps and restarts).
    pub next_generation: u64,
    pub apps: Vec<AppRecord>,
}

/// Where the registry lives.
#[derive(Debug, Clone)]
pub struct Store {
    path: PathBuf,
}

impl Store {
    pub fn new(state_dir: &Path) -> Self {
        Self {
            path: state_dir.join(FILE_NAME),
        }
    }

    /// The saved registry, or an empty one on first start. An unreadable file is an error: the
    /// controller refuses to start rather than forget every app.
    pub fn load(&self) -> Result<RegistryFile, StateFileError> {
        Ok(state_file::read_json(&self.path)?.unwrap_or_default())
    }

    pub fn save(&self, file: &RegistryFile) -> Result<(), StateFileError> {
        state_file::write_json(&self.path, file)
    }
}
