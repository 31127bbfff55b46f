//! The safetensors header (CHECKPOINTS.md §1.1): 8-byte little-endian length, JSON object,
//! tensor data. Read with one small read; checked before anyone maps the file.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::de::{Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};

/// Largest header accepted, in bytes: the cap of the reference `safetensors` crate
/// (`safetensors/src/tensor.rs`, `MAX_HEADER_SIZE`).
pub const MAX_HEADER_LEN: u64 = 100_000_000;

/// Why a file cannot be used as a checkpoint. Every message names the file's problem plainly.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    Corrupt(String),
    #[error("unsupported model: {what} ({found})")]
    Unsupported { what: String, found: String },
    #[error("not a Stable Diffusion checkpoint: {found}")]
    Unknown { found: String },
}

impl CheckpointError {
    /// Short stable kind for JSON bodies and metric labels.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Io { .. } => "io",
            Self::Corrupt(_) => "corrupt_file",
            Self::Unsupported { .. } => "unsupported_model",
            Self::Unknown { .. } => "unknown_model",
        }
    }
}

/// One tensor's entry in the header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorInfo {
    pub dtype: String,
    pub shape: Vec<usize>,
    /// `[begin, end)` relative to the start of the data region.
    pub data_offsets: (u64, u64),
}

impl TensorInfo {
    /// Number of elements (1 for a 0-rank scalar, 0 for an empty tensor).
    pub fn numel(&self) -> u64 {
        self.shape.iter().map(|&d| d as u64).product()
    }

    /// Size in bytes of the stored data.
    pub fn byte_len(&self) -> u64 {
        self.data_offsets.1.saturating_sub(self.data_offsets.0)
    }
}

/// Bytes per element of a safetensors dtype string; `None` for a dtype this reader does not
/// know (sub-byte fp4/fp6 packings included, which no SD checkpoint uses).
pub fn dtype_size(dtype: &str) -> Option<u64> {
    // Names and sizes from the safetensors format README / `Dtype` enum.
    Some(match dtype {
        "BOOL" | "U8" | "I8" | "F8_E5M2" | "F8_E4M3" | "F8_E8M0" => 1,
        "I16" | "U16" | "F16" | "BF16" => 2,
        "I32" | "U32" | "F32" => 4,
        "I64" | "U64" | "F64" => 8,
        _ => return None,
    })
}

/// A parsed and checked safetensors header.
#[derive(Debug, Clone, PartialEq)]
pub struct Header {
    pub path: PathBuf,
    pub file_size: u64,
    /// Absolute file offset of the data region (8 + header length).
    pub data_start: u64,
    pub tensors: BTreeMap<String, TensorInfo>,
    pub metadata: BTreeMap<String, String>,
}

impl Header {
    /// Read and check the header of `path` without touching tensor data.
    pub fn read(path: &Path) -> Result<Self, CheckpointError> {
        let io = |source| CheckpointError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut file = File::open(path).map_err(io)?;
        let file_size = file.metadata().map_err(io)?.len();
        let name = path.display();
        if file_size < 8 {
            return Err(corrupt(
                &name,
                format!("file is {file_size} bytes, too short for a safetensors header"),
            ));
        }
        let mut len_bytes = [0u8; 8];
        file.read_exact(&mut len_bytes).map_err(io)?;
        let header_len = u64::from_le_bytes(len_bytes);
        if header_len > MAX_HEADER_LEN {
            return Err(corrupt(
                &name,
                format!("header length {header_len} exceeds the {MAX_HEADER_LEN}-byte limit"),
            ));
        }
        if 8 + header_len > file_size {
            return Err(corrupt(
                &name,
                format!("header length {header_len} runs past the end of the {file_size}-byte file"),
            ));
        }
        // header_len ≤ MAX_HEADER_LEN, so this fits in memory and in usize.
        let mut json = vec![0u8; header_len as usize];
        file.read_exact(&mut json).map_err(io)?;
        Self::parse(path, file_size, &json)
    }

    /// Check the JSON header bytes of a file of `file_size` bytes (what `read` does after I/O).
    pub fn parse(path: &Path, file_size: u64, json: &[u8]) -> Result<Self, CheckpointError> {
        let name = path.display();
        if json.first() != Some(&b'{') {
            return Err(corrupt(&name, "header does not start with `{`".to_string()));
        }
        // The format allows trailing spaces as padding.
        let end = json.iter().rposition(|&b| b != b' ').map_or(0, |i| i + 1);
        let text = std::str::from_utf8(&json[..end])
            .map_err(|e| corrupt(&name, format!("header is not UTF-8: {e}")))?;
        let entries: Entries = serde_json::from_str(text)
            .map_err(|e| corrupt(&name, format!("header is not valid JSON: {e}")))?;

        let mut tensors = BTreeMap::new();
        let mut metadata = BTreeMap::new();
        for (key, value) in entries.0 {
            if key == "__metadata__" {
                metadata = parse_metadata(&name, value)?;
                continue;
            }
            let info: TensorInfo = serde_json::from_value(value)
                .map_err(|e| corrupt(&name, format!("tensor `{key}` has a malformed entry: {e}")))?;
            if tensors.insert(key.clone(), info).is_some() {
                return Err(corrupt(&name, format!("tensor `{key}` appears twice")));
            }
        }
        let data_start = 8 + json.len() as u64;
        check_data_region(&name, &tensors, file_size, data_start)?;
        Ok(Self {
            path: path.to_path_buf(),
            file_size,
            data_start,
            tensors,
            metadata,
        })
    }

    /// The entry for `key`, if the file has it.
    pub fn tensor(&self, key: &str) -> Option<&TensorInfo> {
        self.tensors.get(key)
    }

    /// Shape of `key`, if the file has it.
    pub fn shape(&self, key: &str) -> Option<&[usize]> {
        self.tensors.get(key).map(|t| t.shape.as_slice())
    }

    /// Whether the file has `key`.
    pub fn has(&self, key: &str) -> bool {
        self.tensors.contains_key(key)
    }

    /// All tensor names starting with `prefix`, in sorted order.
    pub fn keys_with_prefix<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.tensors
            .range::<str, _>((std::ops::Bound::Included(prefix), std::ops::Bound::Unbounded))
            .map(|(k, _)| k.as_str())
            .take_while(move |k| k.starts_with(prefix))
    }

    /// Whether any tensor name starts with `prefix`.
    pub fn has_prefix(&self, prefix: &str) -> bool {
        self.keys_with_prefix(prefix).next().is_some()
    }

    /// Distinct integer segments directly after `prefix` (`prefix` + `<n>.` …), sorted.
    pub fn indices_after(&self, prefix: &str) -> Vec<usize> {
        let mut found: Vec<usize> = self
            .keys_with_prefix(prefix)
            .filter_map(|k| k[prefix.len()..].split('.').next()?.parse().ok())
            .collect();
        found.sort_unstable();
        found.dedup();
        found
    }

    /// The file name for messages.
    pub fn file_name(&self) -> String {
        self.path.display().to_string()
    }
}

fn corrupt(file: &impl fmt::Display, what: String) -> CheckpointError {
    CheckpointError::Corrupt(format!("{file}: {what}"))
}

fn parse_metadata(
    file: &impl fmt::Display,
    value: serde_json::Value,
) -> Result<BTreeMap<String, String>, CheckpointError> {
    let serde_json::Value::Object(map) = value else {
        return Err(corrupt(file, "`__metadata__` is not a JSON object".to_string()));
    };
    map.into_iter()
        .map(|(k, v)| match v {
            serde_json::Value::String(s) => Ok((k, s)),
            other => Err(corrupt(
                file,
                format!("metadata key `{k}` is not a string (found {other})"),
            )),
        })
        .collect()
}

/// Every tensor has a known dtype and a byte range that matches its shape; together the
/// ranges tile the data region exactly (no overlap, no hole, nothing missing at the end).
fn check_data_region(
    file: &impl fmt::Display,
    tensors: &BTreeMap<String, TensorInfo>,
    file_size: u64,
    data_start: u64,
) -> Result<(), CheckpointError> {
    for (key, t) in tensors {
        let size = dtype_size(&t.dtype)
            .ok_or_else(|| corrupt(file, format!("tensor `{key}` has unknown dtype `{}`", t.dtype)))?;
        let (begin, end) = t.data_offsets;
        if end < begin {
            return Err(corrupt(
                file,
                format!("tensor `{key}` has data_offsets [{begin}, {end}] that run backwards"),
            ));
        }
        let expected = t
            .shape
            .iter()
            .try_fold(size, |acc, &d| acc.checked_mul(d as u64))
            .ok_or_else(|| corrupt(file, format!("tensor `{key}` has a shape too large to address")))?;
        if end - begin != expected {
            return Err(corrupt(
                file,
                format!(
                    "tensor `{key}` ({} {:?}) needs {expected} bytes but its data_offsets span {}",
                    t.dtype,
                    t.shape,
                    end - begin
                ),
            ));
        }
    }
    let mut ranges: Vec<(u64, u64, &str)> = tensors
        .iter()
        .map(|(k, t)| (t.data_offsets.0, t.data_offsets.1, k.as_str()))
        .collect();
    ranges.sort_unstable();
    let mut covered = 0u64;
    let mut last_key = "";
    for (begin, end, key) in ranges {
        if begin < covered {
            return Err(corrupt(
                file,
                format!("tensors `{last_key}` and `{key}` overlap at byte {begin}"),
            ));
        }
        if begin > covered {
            return Err(corrupt(
                file,
                format!("bytes {covered}..{begin} of the data region belong to no tensor"),
            ));
        }
        covered = end;
        last_key = key;
    }
    let actual = file_size - data_start;
    if covered > actual {
        return Err(corrupt(
            file,
            format!(
                "file is truncated: expected {} bytes, found {file_size} ({covered} bytes of tensor data, {actual} present)",
                data_start + covered
            ),
        ));
    }
    if covered < actual {
        return Err(corrupt(
            file,
            format!(
                "{} bytes after the last tensor belong to no tensor (expected {} bytes, found {file_size})",
                actual - covered,
                data_start + covered
            ),
        ));
    }
    Ok(())
}

/// The header's top-level entries in file order, keeping duplicates so they can be refused
/// (serde_json's map would silently keep the last one).
struct Entries(Vec<(String, serde_json::Value)>);

impl<'de> Deserialize<'de> for Entries {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct EntriesVisitor;
        impl<'de> Visitor<'de> for EntriesVisitor {
            type Value = Entries;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object of tensor entries")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Entries, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    entries.push(entry);
                }
                Ok(Entries(entries))
            }
        }
        deserializer.deserialize_map(EntriesVisitor)
    }
}

#[cfg(test)]
#[path = "header_tests.rs"]
mod tests;
