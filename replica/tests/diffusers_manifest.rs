//! Our diffusers-folder writer against what diffusers itself saves. `make_goldens.py` loads the
//! tiny single files with `from_single_file`, calls `save_pretrained`, and commits per component
//! the tensor names and shapes and the config keys that matter
//! (`tests/golden/<family>/diffusers_manifest.json`); `make-test-model --layout diffusers` must
//! write exactly those names and shapes and agreeing configs.
//!
//! By hand: `make_goldens.py --manifests-only --keep-folders DIR`, then
//! `SDPLANE_DIFFUSERS_SAVED=DIR cargo test -p sdplane-replica --test diffusers_manifest -- --ignored`
//! loads diffusers' own folders and checks the 4-step golden images.

mod golden_common;

use std::collections::BTreeMap;
use std::path::Path;

use golden_common::{ImageCase, assert_image_matches, golden_dir, summary};
use sdplane_replica::test_model::{self, TestFamily, TestLayout, TestModelOptions, TestPrediction};
use sdplane_wire::checkpoint::Header;
use serde_json::Value;

fn manifest(family: &str) -> Value {
    let text = std::fs::read_to_string(golden_dir(family).join("diffusers_manifest.json"))
        .expect("diffusers_manifest.json (rerun make_goldens.py)");
    serde_json::from_str(&text).expect("manifest parses")
}

fn options(family: &str, seed: u64) -> (TestFamily, TestModelOptions) {
    let (f, prediction) = match family {
        "sd15" => (TestFamily::Sd15, None),
        "sd21" => (TestFamily::Sd21, Some(TestPrediction::V)),
        _ => (TestFamily::Sdxl, None),
    };
    let opts = TestModelOptions {
        seed,
        prediction,
        layout: TestLayout::Diffusers,
        ..TestModelOptions::default()
    };
    (f, opts)
}

/// Numbers compare as numbers (1e-05 vs 0.00001), everything else exactly.
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            (x.as_f64().unwrap_or(f64::NAN) - y.as_f64().unwrap_or(f64::NAN)).abs() < 1e-12
        }
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same(a, b)),
        _ => a == b,
    }
}

fn assert_writer_matches_manifest(family: &str) {
    let m = manifest(family);
    let s = summary(family);
    let (test_family, opts) = options(family, s.seed);
    let dir = tempfile::tempdir().expect("tempdir");
    let folder = dir.path().join(family);
    test_model::write(test_family, &opts, &folder).expect("write folder");
    let index: Value =
        serde_json::from_str(&std::fs::read_to_string(folder.join("model_index.json")).expect("index"))
            .expect("json");
    let components = m["components"].as_object().expect("components");
    for (name, entry) in components {
        if name != "scheduler" {
            assert_eq!(
                index[name], m["model_index"][name],
                "{family}: model_index `{name}`"
            );
        }
        if let Some(tensors) = entry.get("tensors").and_then(Value::as_object) {
            let file = folder.join(name).join(entry["file"].as_str().expect("file"));
            let header = Header::read(&file).expect("our component file");
            let ours: BTreeMap<&str, Vec<usize>> = header
                .tensors
                .iter()
                .map(|(k, t)| (k.as_str(), t.shape.clone()))
                .collect();
            let theirs: BTreeMap<&str, Vec<usize>> = tensors
                .iter()
                .map(|(k, v)| (k.as_str(), serde_json::from_value(v.clone()).expect("shape")))
                .collect();
            let missing: Vec<_> = theirs.keys().filter(|k| !ours.contains_key(*k)).collect();
            let extra: Vec<_> = ours.keys().filter(|k| !theirs.contains_key(*k)).collect();
            assert!(
                missing.is_empty() && extra.is_empty(),
                "{family}/{name}: missing {missing:?}, extra {extra:?}"
            );
            for (k, shape) in &theirs {
                assert_eq!(&ours[k], shape, "{family}/{name}: shape of `{k}`");
            }
        }
        let config_file = if name == "scheduler" {
            "scheduler_config.json"
        } else {
            "config.json"
        };
        let ours: Value = serde_json::from_str(
            &std::fs::read_to_string(folder.join(name).join(config_file)).expect("our config"),
        )
        .expect("config json");
        for (key, want) in entry["config"].as_object().expect("config") {
            assert!(
                same(&ours[key], want),
                "{family}/{name}: config `{key}` is {} but diffusers saved {want}",
                ours[key]
            );
        }
    }
    // Our folder has no component diffusers lacks (tokenizers aside, which we never write).
    for sub in std::fs::read_dir(&folder).expect("read folder").flatten() {
        let name = sub.file_name().to_string_lossy().into_owned();
        if sub.path().is_dir() {
            assert!(
                components.contains_key(&name),
                "{family}: extra component `{name}`"
            );
        }
    }
}

#[test]
fn sd15_folder_has_exactly_the_tensors_and_configs_diffusers_saves() {
    assert_writer_matches_manifest("sd15");
}

#[test]
fn sd21_folder_has_exactly_the_tensors_and_configs_diffusers_saves() {
    assert_writer_matches_manifest("sd21");
}

#[test]
fn sdxl_folder_has_exactly_the_tensors_and_configs_diffusers_saves() {
    assert_writer_matches_manifest("sdxl");
}

/// Generate the golden 4-step DDIM image from a folder diffusers itself saved.
fn diffusers_saved_folder_reproduces_the_golden(family: &str) {
    use sdplane_replica::device::DTypeChoice;
    use sdplane_replica::model::SdModel;
    use sdplane_replica::pipeline::CandleGenerator;

    let Some(root) = std::env::var_os("SDPLANE_DIFFUSERS_SAVED") else {
        panic!("set SDPLANE_DIFFUSERS_SAVED to make_goldens.py --keep-folders DIR");
    };
    let path = Path::new(&root).join(family);
    let model = SdModel::load(
        &path,
        &candle_core::Device::Cpu,
        candle_core::DType::F32,
        &|_, _| {},
    )
    .expect("load diffusers' folder");
    assert_eq!(
        model.detection.layout,
        sdplane_wire::checkpoint::ModelLayout::Diffusers
    );
    let generator = CandleGenerator::from_model(model, &path, "cpu", DTypeChoice::F32, u64::MAX);
    let s = summary(family);
    let case = ImageCase {
        scheduler: sdplane_wire::api::SchedulerKind::Ddim,
        guidance: s.guidance,
        negative_prompt: &s.negative_prompt,
        height: s.size,
        width: s.size,
        init_latents: "init_latents",
        image: "image_ddim_cfg",
    };
    assert_image_matches(family, &generator, &s, &case);
}

#[test]
#[ignore = "needs folders saved by diffusers (make_goldens.py --keep-folders)"]
fn sd15_folder_saved_by_diffusers_gives_the_golden_image() {
    diffusers_saved_folder_reproduces_the_golden("sd15");
}

#[test]
#[ignore = "needs folders saved by diffusers (make_goldens.py --keep-folders)"]
fn sd21_folder_saved_by_diffusers_gives_the_golden_image() {
    diffusers_saved_folder_reproduces_the_golden("sd21");
}

#[test]
#[ignore = "needs folders saved by diffusers (make_goldens.py --keep-folders)"]
fn sdxl_folder_saved_by_diffusers_gives_the_golden_image() {
    diffusers_saved_folder_reproduces_the_golden("sdxl");
}
