//! Header parser tests on real temp files (CHECKPOINTS.md §7.1).

use std::fs::File;
use std::io::Write;

use super::*;

/// Write `8-byte len + json + data_len zero bytes` (the data part sparse via `set_len`).
fn write_raw(dir: &tempfile::TempDir, json: &[u8], data_len: u64) -> PathBuf {
    let path = dir.path().join("model.safetensors");
    let mut f = File::create(&path).expect("create");
    f.write_all(&(json.len() as u64).to_le_bytes()).expect("len");
    f.write_all(json).expect("json");
    f.set_len(8 + json.len() as u64 + data_len).expect("set_len");
    path
}

fn corrupt_message(result: Result<Header, CheckpointError>) -> String {
    match result {
        Err(CheckpointError::Corrupt(m)) => m,
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[test]
fn well_formed_header_is_parsed_with_metadata_and_offsets() {
    let dir = tempfile::tempdir().expect("tempdir");
    let json = br#"{"__metadata__":{"format":"pt","modelspec.resolution":"512x512"},
        "b":{"dtype":"F16","shape":[2,3],"data_offsets":[16,28]},
        "a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#;
    let path = write_raw(&dir, json, 28);
    let h = Header::read(&path).expect("valid header");
    assert_eq!(h.tensors.len(), 2);
    assert_eq!(h.shape("b"), Some(&[2usize, 3][..]));
    assert_eq!(h.tensor("a").map(|t| t.data_offsets), Some((0, 16)));
    assert_eq!(
        h.metadata.get("modelspec.resolution").map(String::as_str),
        Some("512x512")
    );
    assert_eq!(h.data_start, 8 + json.len() as u64);
    assert_eq!(h.file_size, h.data_start + 28);
}

#[test]
fn trailing_space_padding_is_accepted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let json = br#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}       "#;
    let h = Header::read(&write_raw(&dir, json, 4)).expect("padded header");
    assert!(h.has("a"));
}

#[test]
fn scalar_and_empty_tensors_are_allowed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let json = br#"{"v_pred":{"dtype":"F32","shape":[0],"data_offsets":[0,0]},
        "logit_scale":{"dtype":"F32","shape":[],"data_offsets":[0,4]},
        "ztsnr":{"dtype":"F16","shape":[0,3],"data_offsets":[4,4]}}"#;
    let h = Header::read(&write_raw(&dir, json, 4)).expect("scalars and empties");
    assert_eq!(h.tensor("logit_scale").map(TensorInfo::numel), Some(1));
    assert_eq!(h.tensor("v_pred").map(TensorInfo::numel), Some(0));
}

#[test]
fn truncated_file_names_expected_and_actual_size() {
    let dir = tempfile::tempdir().expect("tempdir");
    let json = br#"{"a":{"dtype":"F32","shape":[1000],"data_offsets":[0,4000]}}"#;
    let path = write_raw(&dir, json, 1000);
    let msg = corrupt_message(Header::read(&path));
    let expected = 8 + json.len() as u64 + 4000;
    let actual = 8 + json.len() as u64 + 1000;
    assert!(msg.contains("truncated"), "{msg}");
    assert!(
        msg.contains(&format!("expected {expected} bytes, found {actual}")),
        "{msg}"
    );
    assert!(msg.starts_with(&path.display().to_string()), "{msg}");
}

#[test]
fn header_length_over_the_cap_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("huge.safetensors");
    let mut f = File::create(&path).expect("create");
    f.write_all(&(MAX_HEADER_LEN + 1).to_le_bytes()).expect("len");
    // Sparse: the file really is bigger than the claimed header, so only the cap can refuse it.
    f.set_len(MAX_HEADER_LEN + 100).expect("set_len");
    let msg = corrupt_message(Header::read(&path));
    assert!(msg.contains("exceeds the 100000000-byte limit"), "{msg}");
}

#[test]
fn header_length_past_end_of_file_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("short.safetensors");
    let mut f = File::create(&path).expect("create");
    f.write_all(&1000u64.to_le_bytes()).expect("len");
    f.write_all(b"{}").expect("json");
    let msg = corrupt_message(Header::read(&path));
    assert!(msg.contains("runs past the end"), "{msg}");
}

#[test]
fn file_shorter_than_the_length_prefix_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tiny.safetensors");
    std::fs::write(&path, b"abc").expect("write");
    let msg = corrupt_message(Header::read(&path));
    assert!(msg.contains("too short"), "{msg}");
}

#[test]
fn header_not_starting_with_brace_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let msg = corrupt_message(Header::read(&write_raw(&dir, br#" {"a":1}"#, 0)));
    assert!(msg.contains("does not start with `{`"), "{msg}");
    let msg = corrupt_message(Header::read(&write_raw(&dir, b"[1,2]", 0)));
    assert!(msg.contains("does not start with `{`"), "{msg}");
}

#[test]
fn invalid_json_and_invalid_utf8_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let msg = corrupt_message(Header::read(&write_raw(&dir, br#"{"a": "#, 0)));
    assert!(msg.contains("not valid JSON"), "{msg}");
    let msg = corrupt_message(Header::read(&write_raw(&dir, b"{\"\xff\": 1}", 0)));
    assert!(msg.contains("not UTF-8"), "{msg}");
}

#[test]
fn metadata_with_non_string_values_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let json = br#"{"__metadata__":{"steps":1000},"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#;
    let msg = corrupt_message(Header::read(&write_raw(&dir, json, 4)));
    assert!(msg.contains("metadata key `steps` is not a string"), "{msg}");
    let json = br#"{"__metadata__":"x"}"#;
    let msg = corrupt_message(Header::read(&write_raw(&dir, json, 0)));
    assert!(msg.contains("not a JSON object"), "{msg}");
}

#[test]
fn unknown_dtype_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let json = br#"{"a":{"dtype":"F12","shape":[1],"data_offsets":[0,4]}}"#;
    let msg = corrupt_message(Header::read(&write_raw(&dir, json, 4)));
    assert!(msg.contains("unknown dtype `F12`"), "{msg}");
}

#[test]
fn byte_range_that_disagrees_with_the_shape_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let json = br#"{"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,12]}}"#;
    let msg = corrupt_message(Header::read(&write_raw(&dir, json, 12)));
    assert!(
        msg.contains("needs 16 bytes but its data_offsets span 12"),
        "{msg}"
    );
    let json = br#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[8,4]}}"#;
    let msg = corrupt_message(Header::read(&write_raw(&dir, json, 8)));
    assert!(msg.contains("run backwards"), "{msg}");
}

#[test]
fn overlapping_tensors_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let json = br#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},
        "b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#;
    let msg = corrupt_message(Header::read(&write_raw(&dir, json, 12)));
    assert!(msg.contains("overlap"), "{msg}");
}

#[test]
fn holes_and_unclaimed_tail_bytes_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let json = br#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#;
    let msg = corrupt_message(Header::read(&write_raw(&dir, json, 8)));
    assert!(
        msg.contains("bytes 0..4 of the data region belong to no tensor"),
        "{msg}"
    );
    let json = br#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#;
    let msg = corrupt_message(Header::read(&write_raw(&dir, json, 10)));
    assert!(msg.contains("6 bytes after the last tensor"), "{msg}");
}

#[test]
fn duplicate_tensor_names_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let json = br#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},
        "a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#;
    let msg = corrupt_message(Header::read(&write_raw(&dir, json, 8)));
    assert!(msg.contains("`a` appears twice"), "{msg}");
}

#[test]
fn malformed_tensor_entry_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let json = br#"{"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}"#;
    let msg = corrupt_message(Header::read(&write_raw(&dir, json, 4)));
    assert!(msg.contains("tensor `a` has a malformed entry"), "{msg}");
}

#[test]
fn shape_whose_size_overflows_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let json = br#"{"a":{"dtype":"F32","shape":[18446744073709551615,4],"data_offsets":[0,4]}}"#;
    let msg = corrupt_message(Header::read(&write_raw(&dir, json, 4)));
    assert!(msg.contains("too large"), "{msg}");
}

#[test]
fn missing_file_is_an_io_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = Header::read(&dir.path().join("absent.safetensors")).expect_err("absent");
    assert_eq!(err.kind(), "io");
}

#[test]
fn prefix_queries_see_only_matching_keys() {
    let dir = tempfile::tempdir().expect("tempdir");
    let json = br#"{"m.blocks.0.w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},
        "m.blocks.10.w":{"dtype":"F32","shape":[1],"data_offsets":[4,8]},
        "m.blocks.2.w":{"dtype":"F32","shape":[1],"data_offsets":[8,12]},
        "n.x":{"dtype":"F32","shape":[1],"data_offsets":[12,16]}}"#;
    let h = Header::read(&write_raw(&dir, json, 16)).expect("valid");
    assert_eq!(h.indices_after("m.blocks."), vec![0, 2, 10]);
    assert_eq!(h.keys_with_prefix("m.").count(), 3);
    assert!(!h.has_prefix("o."));
}
