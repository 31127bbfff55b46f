//! Listing a models directory: every `*.safetensors` file and every diffusers folder (a folder
//! with `model_index.json`, listed as one model, not walked into) with its detection or the
//! reason it cannot be used. A corrupt file or folder is a row with an error, never a failure
//! of the listing.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use super::header::CheckpointError;
use crate::admin::ModelFileEntry;
use crate::app_name::app_name_for_file;

/// Every `.safetensors` file under `dir` (recursively), sorted by relative path, each with its
/// detection summary or an `error`. Only an unreadable `dir` itself is an error. Symlinks are
/// followed only while they stay inside `dir`; one that leaves it, or dangles, is an error row.
pub fn scan_models_dir(dir: &Path) -> Result<Vec<ModelFileEntry>, CheckpointError> {
    let io = |source| CheckpointError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let root = fs::canonicalize(dir).map_err(io)?;
    if !root.is_dir() {
        return Err(io(std::io::Error::new(
            std::io::ErrorKind::NotADirectory,
            "not a directory",
        )));
    }
    let mut entries = Vec::new();
    let mut visited = BTreeSet::from([root.clone()]);
    walk(&root, &root, Path::new(""), &mut visited, &mut entries).map_err(io)?;
    entries.sort_by(|a, b| a.file.cmp(&b.file));
    mark_app_name_clashes(&mut entries);
    Ok(entries)
}

/// One folder level. `real` is the canonical folder read, `rel` its path as listed.
fn walk(
    root: &Path,
    real: &Path,
    rel: &Path,
    visited: &mut BTreeSet<PathBuf>,
    out: &mut Vec<ModelFileEntry>,
) -> std::io::Result<()> {
    let mut children: Vec<_> = fs::read_dir(real)?.collect::<Result<_, _>>()?;
    children.sort_by_key(|c| c.file_name());
    for child in children {
        let rel_path = rel.join(child.file_name());
        let path = child.path();
        let meta = fs::symlink_metadata(&path)?;
        let is_model = has_safetensors_extension(&path);
        if meta.file_type().is_symlink() {
            let target = match fs::canonicalize(&path) {
                Ok(t) => t,
                Err(e) if is_model => {
                    out.push(error_row(&rel_path, 0, format!("broken symlink: {e}")));
                    continue;
                }
                Err(_) => continue,
            };
            if !target.starts_with(root) {
                if is_model || target.is_dir() {
                    let what = format!(
                        "symlink leaves the models folder (points to {})",
                        target.display()
                    );
                    out.push(error_row(&rel_path, 0, what));
                }
                continue;
            }
            if target.is_dir() && super::folder::is_diffusers_folder(&target) {
                out.push(folder_row(&target, &rel_path));
            } else if target.is_dir() {
                // Each real folder once: symlink loops inside the folder end here.
                if visited.insert(target.clone()) {
                    walk(root, &target, &rel_path, visited, out)?;
                }
            } else if is_model {
                out.push(inspect_row(&target, &rel_path));
            }
        } else if meta.is_dir() && super::folder::is_diffusers_folder(&path) {
            out.push(folder_row(&path, &rel_path));
        } else if meta.is_dir() {
            if visited.insert(path.clone()) {
                walk(root, &path, &rel_path, visited, out)?;
            }
        } else if is_model && meta.is_file() {
            out.push(inspect_row(&path, &rel_path));
        }
    }
    Ok(())
}

fn has_safetensors_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("safetensors"))
}

/// `a/b.safetensors` with `/` separators whatever the platform.
fn display_rel(rel: &Path) -> String {
    rel.components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}

fn error_row(rel: &Path, size_bytes: u64, error: String) -> ModelFileEntry {
    ModelFileEntry {
        file: display_rel(rel),
        size_bytes,
        app_name: app_name_for_file(rel),
        family: None,
        family_label: None,
        dtype: None,
        parameters: None,
        error: Some(error),
        deployed_app: None,
        app_state: None,
    }
}

/// Detect one file; any failure becomes the row's error.
fn inspect_row(path: &Path, rel: &Path) -> ModelFileEntry {
    let size = fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    match super::inspect(path) {
        Ok(d) => ModelFileEntry {
            family: Some(d.family_name().to_string()),
            family_label: Some(d.family_label()),
            dtype: Some(d.dtype.clone()),
            parameters: Some(d.parameters),
            error: None,
            ..error_row(rel, size, String::new())
        },
        Err(e) => error_row(rel, size, e.to_string()),
    }
}

/// Detect one diffusers folder; its size is every file under it. The app name comes from the
/// folder's whole name (`my.model/` → `sd-my-model`), not a stem.
fn folder_row(path: &Path, rel: &Path) -> ModelFileEntry {
    let size = super::folder::folder_size(path);
    let app_name = super::folder::app_name_for_folder(Path::new(&display_rel(rel)));
    let row = match super::folder::inspect_folder(path) {
        Ok(model) => ModelFileEntry {
            family: Some(model.detection.family_name().to_string()),
            family_label: Some(model.detection.family_label()),
            dtype: Some(model.detection.dtype.clone()),
            parameters: Some(model.detection.parameters),
            error: None,
            ..error_row(rel, size, String::new())
        },
        Err(e) => error_row(rel, size, e.to_string()),
    };
    ModelFileEntry { app_name, ..row }
}

/// Two files whose stems give the same app name cannot both be deployed: every file after
/// the first (in sorted order) gets an error naming the one that owns the name.
fn mark_app_name_clashes(entries: &mut [ModelFileEntry]) {
    let mut owners: BTreeMap<String, String> = BTreeMap::new();
    for e in entries.iter_mut() {
        match owners.get(&e.app_name) {
            Some(owner) if e.error.is_none() => {
                e.error = Some(format!("app name `{}` is already taken by `{owner}`", e.app_name));
            }
            Some(_) => {}
            None => {
                owners.insert(e.app_name.clone(), e.file.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;
    use crate::checkpoint::Family;
    use crate::checkpoint::synth::{SynthSpec, synthetic_header};

    /// A real file with a synthetic header and a sparse (all-zero) data region.
    fn write_model(path: &Path, spec: &SynthSpec) {
        let header = synthetic_header(&spec.tensors(), "F16", BTreeMap::new());
        let json = serde_json::to_vec(&header.tensors).expect("json");
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).expect("mkdir");
        }
        let mut f = fs::File::create(path).expect("create");
        f.write_all(&(json.len() as u64).to_le_bytes()).expect("len");
        f.write_all(&json).expect("json");
        f.set_len(8 + json.len() as u64 + (header.file_size - 8))
            .expect("set_len");
    }

    #[test]
    fn listing_is_sorted_recursive_and_keeps_bad_files_as_error_rows() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        write_model(&root.join("b_sdxl.safetensors"), &SynthSpec::tiny(Family::Sdxl));
        write_model(
            &root.join("sub/a_sd15.safetensors"),
            &SynthSpec::tiny(Family::Sd1),
        );
        fs::write(root.join("broken.safetensors"), b"not a model").expect("write");
        fs::write(root.join("notes.txt"), b"ignored").expect("write");
        let rows = scan_models_dir(root).expect("scan");
        let files: Vec<&str> = rows.iter().map(|r| r.file.as_str()).collect();
        assert_eq!(
            files,
            vec![
                "b_sdxl.safetensors",
                "broken.safetensors",
                "sub/a_sd15.safetensors"
            ]
        );
        assert_eq!(rows[0].family.as_deref(), Some("sdxl"));
        assert_eq!(rows[0].family_label.as_deref(), Some("SDXL base"));
        assert_eq!(rows[0].dtype.as_deref(), Some("F16"));
        assert_eq!(rows[0].app_name, "sd-b-sdxl");
        assert!(rows[0].error.is_none());
        assert!(rows[1].family.is_none());
        assert!(
            rows[1].error.as_deref().is_some_and(|e| e.contains("header")),
            "{:?}",
            rows[1].error
        );
        assert_eq!(rows[1].size_bytes, 11);
        assert_eq!(rows[2].family.as_deref(), Some("sd1"));
        assert_eq!(rows[2].app_name, "sd-a-sd15");
    }

    #[test]
    #[cfg(unix)]
    fn symlinks_leaving_the_folder_are_error_rows_and_inside_ones_are_followed() {
        let outside = tempfile::tempdir().expect("tempdir");
        write_model(
            &outside.path().join("secret.safetensors"),
            &SynthSpec::tiny(Family::Sd1),
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        write_model(&root.join("real.safetensors"), &SynthSpec::tiny(Family::Sd2));
        std::os::unix::fs::symlink(
            outside.path().join("secret.safetensors"),
            root.join("escape.safetensors"),
        )
        .expect("symlink");
        std::os::unix::fs::symlink(root.join("real.safetensors"), root.join("alias.safetensors"))
            .expect("symlink");
        std::os::unix::fs::symlink(root, root.join("loop")).expect("symlink");
        std::os::unix::fs::symlink(root.join("gone.safetensors"), root.join("dangling.safetensors"))
            .expect("symlink");
        let rows = scan_models_dir(root).expect("scan");
        let by_file: BTreeMap<&str, &ModelFileEntry> = rows.iter().map(|r| (r.file.as_str(), r)).collect();
        assert_eq!(by_file.len(), 4, "{:?}", by_file.keys());
        assert!(
            by_file["escape.safetensors"]
                .error
                .as_deref()
                .is_some_and(|e| e.contains("leaves the models folder"))
        );
        assert_eq!(by_file["alias.safetensors"].family.as_deref(), Some("sd2"));
        assert!(
            by_file["dangling.safetensors"]
                .error
                .as_deref()
                .is_some_and(|e| e.contains("broken symlink"))
        );
        assert!(by_file["real.safetensors"].error.is_none());
    }

    #[test]
    fn files_whose_app_names_clash_are_flagged_after_the_first() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_model(
            &dir.path().join("a/model.safetensors"),
            &SynthSpec::tiny(Family::Sd1),
        );
        write_model(
            &dir.path().join("b/model.safetensors"),
            &SynthSpec::tiny(Family::Sd1),
        );
        let rows = scan_models_dir(dir.path()).expect("scan");
        assert!(rows[0].error.is_none());
        let error = rows[1].error.as_deref().unwrap_or_default();
        assert!(
            error.contains("already taken by `a/model.safetensors`"),
            "{error}"
        );
    }

    #[test]
    fn a_diffusers_folder_is_one_row_sized_by_all_its_files_and_not_walked_into() {
        let dir = tempfile::tempdir().expect("tempdir");
        let model = dir.path().join("my.model");
        fs::create_dir_all(model.join("unet")).expect("mkdir");
        fs::write(
            model.join("model_index.json"),
            br#"{"_class_name": "StableDiffusionPipeline"}"#,
        )
        .expect("index");
        fs::write(model.join("unet/config.json"), b"{}").expect("config");
        fs::write(model.join("unet/diffusion_pytorch_model.safetensors"), b"short").expect("weights");
        let rows = scan_models_dir(dir.path()).expect("scan");
        assert_eq!(rows.len(), 1, "{rows:?}");
        assert_eq!(rows[0].file, "my.model");
        assert_eq!(rows[0].app_name, "sd-my-model");
        assert_eq!(rows[0].size_bytes, super::super::folder::folder_size(&model));
        assert!(rows[0].size_bytes > 7);
        let error = rows[0].error.as_deref().unwrap_or_default();
        assert!(error.contains("too short"), "{error}");
    }

    #[test]
    fn missing_folder_is_an_io_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = scan_models_dir(&dir.path().join("absent")).expect_err("absent");
        assert_eq!(err.kind(), "io");
    }
}
