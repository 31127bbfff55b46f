//! The models directory as the admin API sees it: resolving a user-given model path with every
//! escape refused (`..`, absolute paths elsewhere, symlinks leading out), checking the file is a
//! checkpoint sdplane can serve (header-only detection), and listing the directory annotated
//! with what is deployed.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use sdplane_wire::admin::{AppState, ModelFileEntry, ModelFileList};

use crate::error::{Error, Result};
use crate::registry::state::ResolvedModel;

/// The canonical models directory.
#[derive(Debug, Clone)]
pub struct ModelsDir {
    root: PathBuf,
}

impl ModelsDir {
    /// Open `path`, which must be an existing directory.
    pub fn open(path: &Path) -> Result<Self> {
        let root = path
            .canonicalize()
            .map_err(|e| Error::Config(format!("models directory {}: {e}", path.display())))?;
        if !root.is_dir() {
            return Err(Error::Config(format!(
                "models directory {} is not a directory",
                root.display()
            )));
        }
        Ok(Self { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Resolve a user-given path (relative to the directory, or absolute inside it) to the
    /// canonical file and its canonical relative name.
    pub fn resolve(&self, requested: &str) -> Result<(PathBuf, String)> {
        let outside = || Error::PathOutsideModels {
            path: requested.to_string(),
        };
        if requested.trim().is_empty() || requested.contains('\0') {
            return Err(Error::BadRequest(
                "`model` must name a file in the models directory".into(),
            ));
        }
        let path = Path::new(requested);
        if path.components().any(|c| c == Component::ParentDir) {
            return Err(outside());
        }
        let candidate = if path.is_absolute() {
            if !path.starts_with(&self.root) {
                return Err(outside());
            }
            path.to_path_buf()
        } else {
            self.root.join(path)
        };
        let canonical = match candidate.canonicalize() {
            Ok(p) => p,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // A dangling symlink inside the directory is still a missing file.
                return Err(Error::ModelNotFound {
                    path: requested.to_string(),
                });
            }
            Err(e) => return Err(Error::BadRequest(format!("model path {requested:?}: {e}"))),
        };
        // Symlinks are followed by canonicalize; where they lead must still be inside.
        let relative = canonical.strip_prefix(&self.root).map_err(|_| outside())?;
        let folder = canonical.is_dir() && sdplane_wire::checkpoint::folder::is_diffusers_folder(&canonical);
        if !canonical.is_file() && !folder {
            return Err(Error::BadRequest(format!(
                "model path {requested:?} is neither a file nor a diffusers folder (with model_index.json)"
            )));
        }
        Ok((canonical.clone(), relative.to_string_lossy().into_owned()))
    }

    /// Resolve and inspect a model for deployment: 4xx for every user mistake, 422 with the
    /// detection message for a file that is not a servable checkpoint.
    pub fn prepare(&self, requested: &str) -> Result<ResolvedModel> {
        let (path, model) = self.resolve(requested)?;
        let detection = sdplane_wire::checkpoint::inspect(&path).map_err(|e| Error::UnsupportedModel {
            kind: e.kind(),
            message: e.to_string(),
        })?;
        let app = model_app_name(&path, &model);
        if !sdplane_wire::app_name::is_valid_app_name(&app) {
            return Err(Error::BadRequest(format!(
                "model file {model:?} gives no usable app name ({app:?}); its stem needs a letter or digit"
            )));
        }
        Ok(ResolvedModel {
            app,
            model,
            path,
            parameters: detection.parameters,
        })
    }

    /// Every `*.safetensors` file under the directory (hidden folders such as the state
    /// directory skipped), detected, with the app deployed from it.
    pub fn list(&self, deployed: &BTreeMap<String, (String, AppState)>) -> ModelFileList {
        let mut files = Vec::new();
        collect(&self.root, &mut files);
        files.sort();
        let models = files
            .into_iter()
            .filter_map(|path| {
                let relative = path.strip_prefix(&self.root).ok()?.to_string_lossy().into_owned();
                let size_bytes = if path.is_dir() {
                    sdplane_wire::checkpoint::folder::folder_size(&path)
                } else {
                    std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0)
                };
                let app_name = model_app_name(&path, &relative);
                let mut entry = ModelFileEntry {
                    file: relative.clone(),
                    size_bytes,
                    app_name,
                    family: None,
                    family_label: None,
                    dtype: None,
                    parameters: None,
                    error: None,
                    deployed_app: None,
                    app_state: None,
                };
                // A symlink leading out is listed but never read.
                let checked = self.resolve(&relative).map(|(p, _)| p);
                match checked.and_then(|p| {
                    sdplane_wire::checkpoint::inspect(&p).map_err(|e| Error::UnsupportedModel {
                        kind: e.kind(),
                        message: e.to_string(),
                    })
                }) {
                    Ok(d) => {
                        entry.family = Some(d.family_name().to_string());
                        entry.family_label = Some(d.family_label());
                        entry.dtype = Some(d.dtype.clone());
                        entry.parameters = Some(d.parameters);
                    }
                    Err(e) => entry.error = Some(e.to_string()),
                }
                if let Some((app, state)) = deployed.get(&relative) {
                    entry.deployed_app = Some(app.clone());
                    entry.app_state = Some(*state);
                }
                Some(entry)
            })
            .collect();
        ModelFileList {
            models_dir: self.root.display().to_string(),
            models,
        }
    }
}

/// App name of a model file (its stem) or diffusers folder (its whole name).
fn model_app_name(path: &Path, relative: &str) -> String {
    if path.is_dir() {
        sdplane_wire::checkpoint::folder::app_name_for_folder(Path::new(relative))
    } else {
        sdplane_wire::app_name_for_file(Path::new(relative))
    }
}

/// Walk `dir` for `*.safetensors` and diffusers folders (listed whole, not walked into),
/// skipping dot-folders; unreadable folders are skipped.
fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let hidden = entry.file_name().to_string_lossy().starts_with('.');
        match entry.file_type() {
            Ok(t)
                if t.is_dir() && !hidden && sdplane_wire::checkpoint::folder::is_diffusers_folder(&path) =>
            {
                out.push(path)
            }
            Ok(t) if t.is_dir() && !hidden => collect(&path, out),
            Ok(_)
                if path
                    .extension()
                    .is_some_and(|e| e.eq_ignore_ascii_case("safetensors"))
                    && !hidden =>
            {
                out.push(path)
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (tempfile::TempDir, tempfile::TempDir, ModelsDir) {
        let models = tempfile::tempdir().expect("tempdir");
        let elsewhere = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(models.path().join("sub")).expect("mkdir");
        std::fs::write(models.path().join("a.safetensors"), b"x").expect("write");
        std::fs::write(models.path().join("sub/b.safetensors"), b"x").expect("write");
        std::fs::write(elsewhere.path().join("secret.safetensors"), b"x").expect("write");
        std::os::unix::fs::symlink(
            elsewhere.path().join("secret.safetensors"),
            models.path().join("out.safetensors"),
        )
        .expect("symlink");
        std::os::unix::fs::symlink(
            models.path().join("a.safetensors"),
            models.path().join("alias.safetensors"),
        )
        .expect("symlink");
        let dir = ModelsDir::open(models.path()).expect("open");
        (models, elsewhere, dir)
    }

    #[test]
    fn paths_inside_the_models_directory_resolve_to_one_canonical_name() {
        let (_m, _e, dir) = setup();
        assert_eq!(dir.resolve("a.safetensors").expect("a").1, "a.safetensors");
        assert_eq!(
            dir.resolve("./sub/b.safetensors").expect("b").1,
            "sub/b.safetensors"
        );
        let absolute = dir.root().join("a.safetensors");
        assert_eq!(
            dir.resolve(&absolute.to_string_lossy()).expect("abs").1,
            "a.safetensors"
        );
        assert_eq!(
            dir.resolve("alias.safetensors").expect("alias").1,
            "a.safetensors"
        );
    }

    #[test]
    fn every_way_out_of_the_models_directory_is_refused_with_400() {
        let (_m, elsewhere, dir) = setup();
        let outside_abs = elsewhere.path().join("secret.safetensors");
        for path in [
            "../secret.safetensors",
            "sub/../../x.safetensors",
            "out.safetensors",
            &outside_abs.to_string_lossy(),
        ] {
            let err = dir.resolve(path).expect_err(path);
            assert!(matches!(err, Error::PathOutsideModels { .. }), "{path}: {err:?}");
            assert_eq!(err.status().as_u16(), 400);
        }
        for path in ["", "sub"] {
            assert_eq!(
                dir.resolve(path).expect_err(path).status().as_u16(),
                400,
                "{path:?}"
            );
        }
    }

    #[test]
    fn a_diffusers_folder_resolves_and_lists_as_one_model_sized_by_its_files() {
        let (models, _e, dir) = setup();
        let folder = models.path().join("my.model");
        std::fs::create_dir_all(folder.join("unet")).expect("mkdir");
        std::fs::write(folder.join("model_index.json"), b"{}").expect("index");
        std::fs::write(folder.join("unet/diffusion_pytorch_model.safetensors"), b"12345").expect("w");
        assert_eq!(dir.resolve("my.model").expect("folder").1, "my.model");
        let list = dir.list(&BTreeMap::new());
        let rows: Vec<&ModelFileEntry> = list
            .models
            .iter()
            .filter(|m| m.file.starts_with("my.model"))
            .collect();
        assert_eq!(rows.len(), 1, "{rows:?}");
        assert_eq!(rows[0].app_name, "sd-my-model");
        assert_eq!(rows[0].size_bytes, 7);
        assert!(rows[0].error.is_some(), "an incomplete folder is an error row");
    }

    #[test]
    fn a_missing_file_is_404() {
        let (_m, _e, dir) = setup();
        assert!(matches!(
            dir.resolve("nope.safetensors"),
            Err(Error::ModelNotFound { .. })
        ));
    }

    #[test]
    fn a_file_that_is_not_a_checkpoint_is_422_with_the_detection_message() {
        let (_m, _e, dir) = setup();
        let err = dir.prepare("a.safetensors").expect_err("garbage");
        assert_eq!(err.status().as_u16(), 422, "{err}");
        assert!(!err.to_string().is_empty());
    }

    #[test]
    fn listing_shows_every_file_with_its_error_and_deployed_app() {
        let (_m, _e, dir) = setup();
        let deployed = BTreeMap::from([("a.safetensors".to_string(), ("sd-a".to_string(), AppState::Ready))]);
        let list = dir.list(&deployed);
        let files: Vec<&str> = list.models.iter().map(|m| m.file.as_str()).collect();
        assert_eq!(
            files,
            vec![
                "a.safetensors",
                "alias.safetensors",
                "out.safetensors",
                "sub/b.safetensors"
            ]
        );
        assert!(
            list.models
                .iter()
                .all(|m| m.error.is_some() && m.family.is_none())
        );
        assert!(
            list.models[2]
                .error
                .as_deref()
                .is_some_and(|e| e.contains("leaves the models directory"))
        );
        assert_eq!(list.models[0].deployed_app.as_deref(), Some("sd-a"));
        assert_eq!(list.models[0].app_state, Some(AppState::Ready));
    }
}
