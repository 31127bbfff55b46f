//! Broken diffusers folders: each is refused with a message naming the problem, never a panic.
//! (Complete folders are written and detected by the replica's `make-test-model --layout
//! diffusers` tests, which own the diffusers-named writer.)

use std::fs;

use super::*;

/// A folder with `model_index.json` for an SD 1.x pipeline and the given extra files.
fn folder(files: &[(&str, &[u8])]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let index = br#"{"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"], "text_encoder": ["transformers", "CLIPTextModel"]}"#;
    fs::write(dir.path().join(MODEL_INDEX), index).expect("index");
    for (name, bytes) in files {
        let path = dir.path().join(name);
        fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        fs::write(path, bytes).expect("write");
    }
    dir
}

fn error(dir: &tempfile::TempDir) -> String {
    inspect_folder(dir.path()).expect_err("broken folder").to_string()
}

#[test]
fn a_folder_without_its_unet_names_the_missing_component() {
    let dir = folder(&[]);
    let e = error(&dir);
    assert!(e.contains("`unet/` is missing"), "{e}");
}

#[test]
fn pickle_only_weights_are_refused_and_never_read() {
    let dir = folder(&[
        ("unet/config.json", b"{}"),
        ("unet/diffusion_pytorch_model.bin", b"PK\x03\x04 pickle"),
    ]);
    let e = error(&dir);
    assert!(
        e.contains("never unpickled") && e.contains("diffusion_pytorch_model.bin"),
        "{e}"
    );
}

#[test]
fn a_bad_config_json_is_a_corrupt_file_error_naming_it() {
    let dir = folder(&[("unet/config.json", b"{not json")]);
    let err = inspect_folder(dir.path()).expect_err("bad json");
    assert_eq!(err.kind(), "corrupt_file");
    assert!(err.to_string().contains("unet/config.json"), "{err}");
}

#[test]
fn a_truncated_safetensors_file_is_reported_with_its_path() {
    // Header promises 16 bytes of F32 data; only 4 follow.
    let json = br#"{"conv_in.weight":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#;
    let mut bytes = (json.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(json);
    bytes.extend_from_slice(&[0; 4]);
    let dir = folder(&[
        ("unet/config.json", b"{}"),
        ("unet/diffusion_pytorch_model.safetensors", &bytes),
    ]);
    let e = error(&dir);
    assert!(
        e.contains("truncated") && e.contains("diffusion_pytorch_model.safetensors"),
        "{e}"
    );
}

#[test]
fn an_unknown_pipeline_class_is_unsupported() {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::write(
        dir.path().join(MODEL_INDEX),
        br#"{"_class_name": "FluxPipeline"}"#,
    )
    .expect("write");
    let e = inspect_folder(dir.path()).expect_err("flux");
    assert_eq!(e.kind(), "unsupported_model");
    assert!(e.to_string().contains("FluxPipeline"), "{e}");
}

#[test]
fn a_shard_index_pointing_outside_the_component_is_refused() {
    let dir = folder(&[
        ("unet/config.json", b"{}"),
        (
            "unet/diffusion_pytorch_model.safetensors.index.json",
            br#"{"weight_map": {"conv_in.weight": "../../elsewhere.safetensors"}}"#,
        ),
    ]);
    let e = error(&dir);
    assert!(e.contains("not a file name in the component folder"), "{e}");
}

#[test]
fn folder_size_sums_every_file_below_it() {
    let dir = folder(&[("a/b.txt", b"12345"), ("c.txt", b"123")]);
    let index_len = fs::metadata(dir.path().join(MODEL_INDEX)).expect("meta").len();
    assert_eq!(folder_size(dir.path()), 8 + index_len);
}
