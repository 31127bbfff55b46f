//! Tensor access for the model's layers: each requested diffusers name goes through the
//! precomputed `KeyMap` to the stored LDM/SGM key, is shape-checked against the header, loaded
//! from the memory-mapped file, transformed (squeeze, row slice, transpose) and converted to the
//! model dtype on the model device. Nothing is converted on disk and the file is never read
//! into one big buffer: each tensor's mapped pages are released as soon as its bytes are
//! copied, so loading peaks at the weights plus one tensor, not weights plus file.
//!
//! A header-only "meta" store answers the same requests with zero-stride placeholder tensors, so
//! a full-size SDXL architecture can be built from a synthetic header in tests without
//! allocating its weights (mapping completeness, CHECKPOINTS.md §7.3).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Tensor};
use sdplane_wire::checkpoint::Header;

use super::error::ModelError;
use super::keys::{KeyMap, Transform};

/// A memory-mapped checkpoint and its checked header (offsets, dtypes, shapes).
pub(crate) struct MappedFile {
    pub(crate) map: memmap2::Mmap,
    pub(crate) header: Header,
}

impl MappedFile {
    /// Read and check the header, then map the file read-only.
    pub(crate) fn open(path: &std::path::Path) -> Result<Self, ModelError> {
        let header = Header::read(path)?;
        let map_error = |e: std::io::Error| ModelError::Map {
            path: path.display().to_string(),
            message: e.to_string(),
        };
        let file = std::fs::File::open(path).map_err(map_error)?;
        // SAFETY: `Header::read` has checked the header length and every tensor's range against
        // the file size. The mapping is read-only and the serving process never writes checkpoint
        // files; a file truncated by another process after this point is outside what we can guard.
        #[allow(unsafe_code)]
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(map_error)?;
        Ok(Self { map, header })
    }

    /// The stored bytes of `key`; `Header::read` has checked every range against the file size.
    fn bytes(&self, key: &str) -> Option<(std::ops::Range<usize>, &[u8])> {
        let info = self.header.tensors.get(key)?;
        let start = usize::try_from(self.header.data_start + info.data_offsets.0).ok()?;
        let end = usize::try_from(self.header.data_start + info.data_offsets.1).ok()?;
        Some((start..end, self.map.get(start..end)?))
    }

    /// Drop the pages of `range` from this process: the tensor has been copied out, and
    /// keeping them would count the file a second time in the replica's memory.
    fn release(&self, range: std::ops::Range<usize>) {
        // SAFETY: the mapping is private and read-only. MADV_DONTNEED on such a mapping only
        // discards cached pages; a later read faults the same file contents back in, so no
        // slice into the map ever sees different bytes. The range lies inside the map.
        #[allow(unsafe_code)]
        let result = unsafe {
            self.map
                .unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, range.start, range.len())
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, "madvise(DONTNEED) failed; pages stay cached");
        }
    }
}

/// Where tensor bytes come from.
pub(crate) enum Store {
    /// The memory-mapped checkpoint.
    Mmap(Arc<MappedFile>),
    /// A diffusers folder: one mapped file per component (or shard); keys are the file's keys
    /// under the component root (`unet.` + key) → (file index, key in that file).
    Files {
        files: Vec<MappedFile>,
        index: HashMap<String, (usize, String)>,
    },
    /// Names, dtypes and shapes only (from a header); tensors are zero-stride placeholders.
    Meta(Arc<BTreeMap<String, (String, Vec<usize>)>>),
}

impl Store {
    /// Map every file of a diffusers folder and index its keys under their component root.
    pub(crate) fn from_folder(
        components: &[sdplane_wire::checkpoint::folder::ComponentFile],
    ) -> Result<Self, ModelError> {
        let mut files = Vec::with_capacity(components.len());
        let mut index = HashMap::new();
        for (i, component) in components.iter().enumerate() {
            let file = MappedFile::open(&component.path)?;
            for key in file.header.tensors.keys() {
                index.insert(format!("{}{key}", component.root), (i, key.clone()));
            }
            files.push(file);
        }
        Ok(Self::Files { files, index })
    }

    /// A header-only store over a diffusers folder's component files, keys rooted like `from_folder`.
    pub(crate) fn meta_from_folder(
        components: &[sdplane_wire::checkpoint::folder::ComponentFile],
    ) -> Result<Self, ModelError> {
        let mut tensors = BTreeMap::new();
        for component in components {
            let header = Header::read(&component.path)?;
            for (k, t) in header.tensors {
                tensors.insert(format!("{}{k}", component.root), (t.dtype, t.shape));
            }
        }
        Ok(Self::Meta(Arc::new(tensors)))
    }

    /// A header-only store: every tensor of `header` by name, dtype and shape.
    pub(crate) fn from_header(header: &sdplane_wire::checkpoint::Header) -> Self {
        let tensors = header
            .tensors
            .iter()
            .map(|(k, t)| (k.clone(), (t.dtype.clone(), t.shape.clone())))
            .collect();
        Self::Meta(Arc::new(tensors))
    }
}

/// A cheap, cloneable handle that layers use to fetch their parameters by diffusers name.
#[derive(Clone)]
pub(crate) struct Weights {
    store: Arc<Store>,
    map: Arc<KeyMap>,
    consumed: Arc<Mutex<BTreeSet<String>>>,
    /// Tensors read ahead by [`Weights::read_ahead`], by requested name, in the stored dtype.
    read: Arc<Mutex<HashMap<String, Tensor>>>,
    prefix: String,
    dtype: DType,
    device: Device,
}

impl Weights {
    pub(crate) fn new(store: Store, map: KeyMap, dtype: DType, device: Device) -> Self {
        Self {
            store: Arc::new(store),
            map: Arc::new(map),
            consumed: Arc::new(Mutex::new(BTreeSet::new())),
            read: Arc::new(Mutex::new(HashMap::new())),
            prefix: String::new(),
            dtype,
            device,
        }
    }

    /// A handle for a sub-module: `name` is appended to the current prefix.
    pub(crate) fn pp(&self, name: impl AsRef<str>) -> Self {
        let mut next = self.clone();
        next.prefix = format!("{}{}.", self.prefix, name.as_ref());
        next
    }

    /// The same weights converted to another dtype (the SDXL VAE stays in f32 under f16).
    pub(crate) fn with_dtype(&self, dtype: DType) -> Self {
        let mut next = self.clone();
        next.dtype = dtype;
        next
    }

    pub(crate) fn dtype(&self) -> DType {
        self.dtype
    }

    pub(crate) fn device(&self) -> &Device {
        &self.device
    }

    /// Fetch parameter `name` (relative to the prefix) with exactly `shape`.
    pub(crate) fn get(&self, shape: &[usize], name: &str) -> Result<Tensor, ModelError> {
        let full = format!("{}{}", self.prefix, name);
        let stored = self.map.get(&full).ok_or_else(|| ModelError::MissingTensor {
            name: full.clone(),
            stored: "(no mapping for this name)".into(),
        })?;
        let (dtype, stored_shape) = self.stored_info(&full, &stored.key)?;
        let found = transformed_shape(&stored_shape, stored.transform);
        if found.as_deref() != Some(shape) {
            return Err(ModelError::ShapeMismatch {
                name: full,
                stored: stored.key.clone(),
                expected: shape.to_vec(),
                found: stored_shape,
            });
        }
        if !matches!(dtype.as_str(), "F32" | "F16" | "BF16" | "F64") {
            return Err(ModelError::UnsupportedDtype {
                stored: stored.key.clone(),
                dtype,
            });
        }
        self.mark_consumed(&stored.key);
        if let Store::Meta(_) = self.store.as_ref() {
            return Ok(Tensor::zeros((), self.dtype, &self.device)?.broadcast_as(shape)?);
        }
        let ahead = self.read.lock().unwrap_or_else(|e| e.into_inner()).remove(&full);
        let t = match ahead {
            Some(t) => t,
            None => self.read_stored(&full, stored)?,
        };
        Ok(t.reshape(shape)?.to_dtype(self.dtype)?)
    }

    /// Requested tensor `full` from the mapped file, transformed, in its stored dtype; the
    /// mapped pages are released once copied.
    fn read_stored(&self, full: &str, stored: &super::keys::Stored) -> Result<Tensor, ModelError> {
        let missing = || ModelError::MissingTensor {
            name: full.to_string(),
            stored: stored.key.clone(),
        };
        let (dtype, stored_shape) = self.stored_info(full, &stored.key)?;
        let (file, key) = self.locate(&stored.key).ok_or_else(missing)?;
        let (range, bytes) = file.bytes(key).ok_or_else(missing)?;
        let raw = Tensor::from_raw_buffer(bytes, candle_dtype(&dtype)?, &stored_shape, &self.device)?;
        file.release(range);
        Ok(match stored.transform {
            Transform::None | Transform::Squeeze => raw,
            Transform::Rows { start, len } => raw.narrow(0, start, len)?.contiguous()?,
            Transform::Transpose => raw.t()?.contiguous()?,
        })
    }

    /// Read every mapped tensor on `threads` threads before the layers ask for them, one at a
    /// time, in file order: on the CPU, copying out of the page cache and first touching the
    /// new memory are most of a load, and both scale with cores. Later `get`s take the tensors
    /// from here and convert them to the model dtype, so the peak stays about the weights.
    /// Does nothing for header-only stores and accelerators (their copies go through the driver).
    pub(crate) fn read_ahead(&self, threads: usize, progress: &(dyn Fn(f64) + Sync)) -> bool {
        if matches!(self.store.as_ref(), Store::Meta(_)) || !self.device.is_cpu() || threads < 2 {
            return false;
        }
        let mut jobs: Vec<(&String, &super::keys::Stored, u64)> = self
            .map
            .names()
            .filter_map(|(name, stored)| {
                let (file, key) = self.locate(&stored.key)?;
                let offset = file.header.tensors.get(key)?.data_offsets.0;
                Some((name, stored, offset))
            })
            .collect();
        jobs.sort_by_key(|&(_, _, offset)| offset);
        let next = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|scope| {
            for _ in 0..threads {
                scope.spawn(|| {
                    while let Some(&(name, stored, _)) =
                        jobs.get(next.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
                    {
                        // A tensor that cannot be read is left to `get`, which reports it with
                        // the shape and dtype checks in context.
                        if let Ok(t) = self.read_stored(name, stored) {
                            let mut read = self.read.lock().unwrap_or_else(|e| e.into_inner());
                            read.insert(name.clone(), t);
                            progress(read.len() as f64 / jobs.len() as f64);
                        }
                    }
                });
            }
        });
        true
    }

    /// Tensors read ahead that no layer asked for (dropped with the last handle).
    pub(crate) fn unused_read_ahead(&self) -> usize {
        self.read.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Weight and optional bias of a layer; the bias shape is `[out]` (`shape[0]`).
    pub(crate) fn weight_bias(
        &self,
        shape: &[usize],
        bias: bool,
    ) -> Result<(Tensor, Option<Tensor>), ModelError> {
        let w = self.get(shape, "weight")?;
        let b = if bias {
            Some(self.get(&shape[..1], "bias")?)
        } else {
            None
        };
        Ok((w, b))
    }

    /// The mapped file holding stored key `key` and the key inside that file.
    fn locate<'a>(&'a self, key: &'a str) -> Option<(&'a MappedFile, &'a str)> {
        match self.store.as_ref() {
            Store::Meta(_) => None,
            Store::Mmap(file) => Some((file.as_ref(), key)),
            Store::Files { files, index } => {
                let (i, inner) = index.get(key)?;
                Some((files.get(*i)?, inner.as_str()))
            }
        }
    }

    fn stored_info(&self, name: &str, key: &str) -> Result<(String, Vec<usize>), ModelError> {
        let missing = || ModelError::MissingTensor {
            name: name.to_string(),
            stored: key.to_string(),
        };
        match self.store.as_ref() {
            Store::Meta(tensors) => tensors.get(key).cloned().ok_or_else(missing),
            Store::Mmap(_) | Store::Files { .. } => {
                let (file, inner) = self.locate(key).ok_or_else(missing)?;
                let info = file.header.tensors.get(inner).ok_or_else(missing)?;
                Ok((info.dtype.clone(), info.shape.clone()))
            }
        }
    }

    /// The stored shape of requested `name` after its transform (what `get` must be asked for).
    pub(crate) fn resolved_shape(&self, name: &str) -> Result<Vec<usize>, ModelError> {
        let stored = self.map.get(name).ok_or_else(|| ModelError::MissingTensor {
            name: name.to_string(),
            stored: "(no mapping for this name)".into(),
        })?;
        let (_, shape) = self.stored_info(name, &stored.key)?;
        Ok(transformed_shape(&shape, stored.transform).unwrap_or(shape))
    }

    /// Every requested name of the map, sorted.
    pub(crate) fn requested_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.map.names().map(|(n, _)| n.clone()).collect();
        names.sort();
        names
    }

    fn mark_consumed(&self, key: &str) {
        // A poisoned lock only means another loader thread panicked; the set is still usable.
        let mut set = self.consumed.lock().unwrap_or_else(|e| e.into_inner());
        set.insert(key.to_string());
    }

    /// Stored keys under a component prefix that were neither loaded nor deliberately ignored.
    pub(crate) fn unconsumed<'a>(&self, stored_keys: impl IntoIterator<Item = &'a str>) -> Vec<String> {
        let set = self.consumed.lock().unwrap_or_else(|e| e.into_inner());
        stored_keys
            .into_iter()
            .filter(|k| self.map.is_component_key(k) && !self.map.is_ignored(k) && !set.contains(*k))
            .map(str::to_string)
            .collect()
    }

    /// Every stored key of the file (for the unconsumed-key warning).
    pub(crate) fn stored_keys(&self) -> Vec<String> {
        match self.store.as_ref() {
            Store::Meta(tensors) => tensors.keys().cloned().collect(),
            Store::Mmap(file) => file.header.tensors.keys().cloned().collect(),
            Store::Files { index, .. } => index.keys().cloned().collect(),
        }
    }
}

#[cfg(test)]
impl Weights {
    /// Every mapped tensor under `root` (e.g. `unet.`), keyed by its diffusers name without the
    /// root: a diffusers-named copy of one component for comparisons with other implementations.
    pub(crate) fn materialize(
        &self,
        root: &str,
    ) -> Result<std::collections::HashMap<String, Tensor>, ModelError> {
        let mut out = std::collections::HashMap::new();
        for (name, stored) in self.map.names() {
            let Some(rest) = name.strip_prefix(root) else {
                continue;
            };
            let (_, shape) = self.stored_info(name, &stored.key)?;
            let shape = transformed_shape(&shape, stored.transform).unwrap_or(shape);
            out.insert(rest.to_string(), self.get(&shape, name)?);
        }
        Ok(out)
    }
}

/// candle's dtype for a header dtype string (only float weights are ever loaded).
fn candle_dtype(stored: &str) -> Result<DType, ModelError> {
    match stored {
        "F32" => Ok(DType::F32),
        "F16" => Ok(DType::F16),
        "BF16" => Ok(DType::BF16),
        "F64" => Ok(DType::F64),
        other => Err(ModelError::UnsupportedDtype {
            stored: String::new(),
            dtype: other.to_string(),
        }),
    }
}

/// The shape a stored tensor has after its transform, or `None` when the transform cannot
/// apply (e.g. a row slice past the end).
fn transformed_shape(stored: &[usize], transform: Transform) -> Option<Vec<usize>> {
    match transform {
        Transform::None => Some(stored.to_vec()),
        Transform::Squeeze => {
            let keep = stored.iter().rposition(|&d| d != 1).map_or(0, |i| i + 1);
            Some(stored[..keep.max(stored.len().min(2))].to_vec())
        }
        Transform::Rows { start, len } => {
            let first = *stored.first()?;
            (start + len <= first).then(|| {
                let mut s = stored.to_vec();
                s[0] = len;
                s
            })
        }
        Transform::Transpose => (stored.len() == 2).then(|| vec![stored[1], stored[0]]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn squeeze_drops_only_trailing_singleton_dims_of_a_1x1_conv() {
        assert_eq!(
            transformed_shape(&[512, 512, 1, 1], Transform::Squeeze),
            Some(vec![512, 512])
        );
        assert_eq!(
            transformed_shape(&[512, 512], Transform::Squeeze),
            Some(vec![512, 512])
        );
        assert_eq!(transformed_shape(&[512], Transform::Squeeze), Some(vec![512]));
    }

    #[test]
    fn row_slice_past_the_end_does_not_resolve() {
        assert_eq!(
            transformed_shape(&[96, 32], Transform::Rows { start: 64, len: 32 }),
            Some(vec![32, 32])
        );
        assert_eq!(
            transformed_shape(&[64, 32], Transform::Rows { start: 64, len: 32 }),
            None
        );
    }
}
