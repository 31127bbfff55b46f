//! The `SDApp` custom resource (`sdplane.io/v1alpha1`): one Stable Diffusion app declared in the
//! cluster, so `kubectl apply` and GitOps deploy models the same way the admin API does. The CRD
//! YAML in `deploy/crd/` and the chart is rendered from these types (see [`crd_yaml`]).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, CustomResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::error::{Error, Result};

/// Desired state of one app: which model file it serves and how it scales.
// Clippy reads two printcolumns of the same type as one attribute given twice.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "sdplane.io",
    version = "v1alpha1",
    kind = "SDApp",
    plural = "sdapps",
    namespaced,
    shortname = "sdapp",
    category = "sdplane",
    status = "SDAppStatus",
    doc = "A Stable Diffusion app: one model file served by 0..N replica pods, scaled to zero when idle.",
    printcolumn(name = "Model", type_ = "string", json_path = ".spec.model"),
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.replicasReady"),
    printcolumn(name = "Desired", type_ = "integer", json_path = ".status.replicasDesired"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct SDAppSpec {
    /// Model file, relative to the models volume (`sd_xl_base_1.0.safetensors`).
    #[schemars(length(min = 1))]
    pub model: String,
    /// Replicas kept even when idle (0 allows scale to zero).
    #[serde(default)]
    pub min_replicas: u32,
    /// Most replicas the autoscaler starts under load.
    #[serde(default = "default_max_replicas")]
    #[schemars(range(min = 1))]
    pub max_replicas: u32,
    /// Seconds without requests before scaling to zero; the controller default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout_seconds: Option<u64>,
    /// In-flight requests per replica before scaling out; the controller default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_concurrency: Option<u32>,
    /// CPU, memory and GPUs of each replica pod; the controller defaults when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<AppResources>,
    /// Container image of the replica pods; the controller's own image when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
}

fn default_max_replicas() -> u32 {
    1
}

/// Resources of one replica pod.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AppResources {
    /// Reserved for the pod (Kubernetes quantities, e.g. `cpu: "2"`, `memory: 8Gi`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<CpuMemory>,
    /// Most the pod may use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<CpuMemory>,
    /// `nvidia.com/gpu` devices per pod (0 or absent: CPU only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpus: Option<u32>,
}

/// A CPU and memory pair of Kubernetes quantities.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CpuMemory {
    /// CPU quantity (`500m`, `2`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<String>,
    /// Memory quantity (`512Mi`, `16Gi`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
}

/// Observed state of an app, written by the controller.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SDAppStatus {
    /// `Ready`, `ScaledToZero` and `Failed` conditions (reason says why).
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// Replica pods passing their readiness probe.
    #[serde(default)]
    pub replicas_ready: u32,
    /// Replicas the autoscaler wants (0 when scaled to zero).
    #[serde(default)]
    pub replicas_desired: u32,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// Condition types the controller writes.
pub mod condition {
    /// At least one replica is ready to serve.
    pub const READY: &str = "Ready";
    /// No replica runs; the next request starts one.
    pub const SCALED_TO_ZERO: &str = "ScaledToZero";
    /// The app cannot run (invalid spec, pods crash-looping); `reason` and `message` say why.
    pub const FAILED: &str = "Failed";
}

impl SDAppSpec {
    /// Check what the API server's schema cannot: the model path stays inside the models
    /// volume, replica bounds are ordered, quantities parse.
    pub fn validate(&self) -> Result<()> {
        validate_model_path(&self.model)?;
        if self.min_replicas > self.max_replicas {
            return Err(Error::InvalidSpec(format!(
                "minReplicas ({}) is greater than maxReplicas ({})",
                self.min_replicas, self.max_replicas
            )));
        }
        if self.max_replicas == 0 {
            return Err(Error::InvalidSpec("maxReplicas must be at least 1".into()));
        }
        if self.target_concurrency == Some(0) {
            return Err(Error::InvalidSpec("targetConcurrency must be at least 1".into()));
        }
        if let Some(resources) = &self.resources {
            for (field, pair) in [("requests", &resources.requests), ("limits", &resources.limits)] {
                let Some(pair) = pair else { continue };
                for (name, value) in [("cpu", &pair.cpu), ("memory", &pair.memory)] {
                    if let Some(value) = value
                        && !is_quantity(value)
                    {
                        return Err(Error::InvalidSpec(format!(
                            "resources.{field}.{name} `{value}` is not a Kubernetes quantity"
                        )));
                    }
                }
            }
        }
        if let Some(image) = &self.image
            && (image.is_empty() || image.chars().any(char::is_whitespace))
        {
            return Err(Error::InvalidSpec(format!(
                "image `{image}` is not an image reference"
            )));
        }
        Ok(())
    }
}

/// A model path must be relative and stay inside the models volume.
fn validate_model_path(model: &str) -> Result<()> {
    let path = std::path::Path::new(model);
    let escapes = path
        .components()
        .any(|c| !matches!(c, std::path::Component::Normal(_)));
    if model.is_empty() || escapes {
        return Err(Error::InvalidSpec(format!(
            "model `{model}` must be a relative path inside the models volume"
        )));
    }
    Ok(())
}

/// Whether `s` follows the quantity grammar of Kubernetes (apimachinery `resource.Quantity`):
/// an unsigned decimal number, then a binary (`Ki`..`Ei`), decimal (`m`, `k`..`E`) or exponent
/// (`e3`) suffix. Negative quantities make no sense for requests and limits, so `-` is refused.
pub fn is_quantity(s: &str) -> bool {
    let s = s.strip_prefix('+').unwrap_or(s);
    let digits_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(digits_end);
    let number_ok = !number.is_empty()
        && number != "."
        && number.matches('.').count() <= 1
        && number.bytes().any(|b| b.is_ascii_digit());
    let suffix_ok = match suffix {
        "" | "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei" | "m" | "k" | "M" | "G" | "T" | "P" | "E" => true,
        exp => exp
            .strip_prefix(['e', 'E'])
            .map(|e| e.strip_prefix(['+', '-']).unwrap_or(e))
            .is_some_and(|e| !e.is_empty() && e.bytes().all(|b| b.is_ascii_digit())),
    };
    number_ok && suffix_ok
}

/// The CRD as YAML, exactly as committed in `deploy/crd/sdapp.yaml` and `charts/sdplane/crds/`.
pub fn crd_yaml() -> String {
    let crd = SDApp::crd();
    // Serialising a CRD built from our own types cannot fail: every field is a plain value.
    let body = serde_yaml::to_string(&crd).unwrap_or_else(|e| format!("# serialisation failed: {e}\n"));
    format!(
        "# Generated from controller/src/kube/crd.rs; do not edit.\n\
         # Regenerate: SDPLANE_UPDATE_CRD=1 cargo test -p sdplane-controller crd\n{body}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(model: &str) -> SDAppSpec {
        SDAppSpec {
            model: model.into(),
            min_replicas: 0,
            max_replicas: 1,
            idle_timeout_seconds: None,
            target_concurrency: None,
            resources: None,
            image: None,
        }
    }

    #[test]
    fn quantities_follow_the_kubernetes_grammar() {
        for good in [
            "1", "500m", "2.5", ".5", "16Gi", "512Mi", "1e3", "1E-2", "+4", "0",
        ] {
            assert!(is_quantity(good), "{good} should parse");
        }
        for bad in ["", "-1", "1.2.3", "Gi", "16 Gi", "16GB", "1e", ".", "abc", "1ki"] {
            assert!(!is_quantity(bad), "{bad} should not parse");
        }
    }

    #[test]
    fn model_paths_outside_the_volume_are_refused() {
        for bad in [
            "",
            "/etc/passwd",
            "../x.safetensors",
            "a/../../x.safetensors",
            "./x.safetensors",
        ] {
            let err = spec(bad).validate().expect_err(bad);
            assert_eq!(err.kind(), "invalid_spec", "{bad}");
        }
        spec("sub/dir/model.safetensors")
            .validate()
            .expect("nested relative path is fine");
    }

    #[test]
    fn replica_bounds_must_be_ordered_and_allow_one_replica() {
        let mut s = spec("m.safetensors");
        s.min_replicas = 3;
        s.max_replicas = 2;
        assert!(
            s.validate()
                .expect_err("min > max")
                .to_string()
                .contains("minReplicas (3)")
        );
        s.min_replicas = 0;
        s.max_replicas = 0;
        assert!(s.validate().is_err());
    }

    #[test]
    fn bad_resource_quantities_name_the_field() {
        let mut s = spec("m.safetensors");
        s.resources = Some(AppResources {
            limits: Some(CpuMemory {
                cpu: None,
                memory: Some("16GB".into()),
            }),
            ..AppResources::default()
        });
        let msg = s.validate().expect_err("16GB is not a quantity").to_string();
        assert!(msg.contains("resources.limits.memory"), "{msg}");
    }

    #[test]
    fn crd_names_match_the_documented_group_kind_and_shortname() {
        let crd = SDApp::crd();
        assert_eq!(crd.metadata.name.as_deref(), Some("sdapps.sdplane.io"));
        assert_eq!(crd.spec.group, "sdplane.io");
        assert_eq!(crd.spec.scope, "Namespaced");
        assert_eq!(crd.spec.names.kind, "SDApp");
        assert_eq!(
            crd.spec.names.short_names.as_deref(),
            Some(&["sdapp".to_string()][..])
        );
        let version = &crd.spec.versions[0];
        assert_eq!(version.name, "v1alpha1");
        assert!(
            version
                .subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some()
        );
    }

    #[test]
    fn spec_json_uses_camel_case_and_defaults_max_replicas_to_one() {
        let s: SDAppSpec = serde_json::from_value(serde_json::json!({
            "model": "m.safetensors", "idleTimeoutSeconds": 60
        }))
        .expect("minimal spec parses");
        assert_eq!(
            (s.min_replicas, s.max_replicas, s.idle_timeout_seconds),
            (0, 1, Some(60))
        );
    }
}
