//! The GPU this replica runs on, seen through NVML (loaded at run time; no NVML, no numbers).
//! Every reading is best effort: any NVML error gives `None`, never a failed request.

use nvml_wrapper::Nvml;
use nvml_wrapper::enums::device::UsedGpuMemory;

use crate::device::DeviceChoice;

const MIB: f64 = 1024.0 * 1024.0;

/// NVML and which of its devices is ours.
pub struct GpuProbe {
    nvml: Nvml,
    device: DeviceRef,
}

impl std::fmt::Debug for GpuProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuProbe")
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

/// How NVML names our device: CUDA ordinals are positions in `CUDA_VISIBLE_DEVICES` (indices
/// or UUIDs), NVML indices are not, so the entry is looked up the way it was given.
#[derive(Debug, Clone, PartialEq, Eq)]
enum DeviceRef {
    Index(u32),
    Uuid(String),
}

/// One reading of our GPU.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuSample {
    pub name: Option<String>,
    pub memory_used_mb: f64,
    pub memory_total_mb: f64,
    /// Memory held by this process, where the driver reports it.
    pub process_memory_mb: Option<f64>,
    pub utilization_percent: Option<f64>,
    /// Energy counter in millijoules since the driver loaded, where the GPU has one.
    pub energy_millijoules: Option<u64>,
}

impl GpuProbe {
    /// `None` on CPU, or where NVML cannot be loaded or does not know the device.
    pub fn open(device: DeviceChoice) -> Option<Self> {
        let DeviceChoice::Cuda(ordinal) = device else {
            return None;
        };
        let visible = std::env::var("CUDA_VISIBLE_DEVICES").ok();
        let device = device_ref(ordinal, visible.as_deref())?;
        match Nvml::init() {
            Ok(nvml) => {
                let probe = Self { nvml, device };
                if probe.sample().is_none() {
                    tracing::warn!(device = ?probe.device, "NVML does not answer for this GPU; GPU metrics are null");
                    return None;
                }
                Some(probe)
            }
            Err(e) => {
                tracing::warn!(error = %e, "NVML is not available; GPU metrics are null");
                None
            }
        }
    }

    /// Read memory, utilisation and energy now.
    pub fn sample(&self) -> Option<GpuSample> {
        let device = match &self.device {
            DeviceRef::Index(i) => self.nvml.device_by_index(*i),
            DeviceRef::Uuid(u) => self.nvml.device_by_uuid(u.as_str()),
        }
        .ok()?;
        let memory = device.memory_info().ok()?;
        let pid = std::process::id();
        let process_memory_mb = device.running_compute_processes().ok().and_then(|list| {
            list.into_iter()
                .find(|p| p.pid == pid)
                .and_then(|p| match p.used_gpu_memory {
                    UsedGpuMemory::Used(bytes) => Some(bytes as f64 / MIB),
                    UsedGpuMemory::Unavailable => None,
                })
        });
        Some(GpuSample {
            name: device.name().ok(),
            memory_used_mb: memory.used as f64 / MIB,
            memory_total_mb: memory.total as f64 / MIB,
            process_memory_mb,
            utilization_percent: device.utilization_rates().ok().map(|u| f64::from(u.gpu)),
            energy_millijoules: device.total_energy_consumption().ok(),
        })
    }

    /// Free device memory in bytes (the default memory budget on a GPU).
    pub fn free_bytes(&self) -> Option<u64> {
        let device = match &self.device {
            DeviceRef::Index(i) => self.nvml.device_by_index(*i),
            DeviceRef::Uuid(u) => self.nvml.device_by_uuid(u.as_str()),
        }
        .ok()?;
        device.memory_info().ok().map(|m| m.free)
    }
}

/// Which NVML device CUDA ordinal `ordinal` is, given `CUDA_VISIBLE_DEVICES`.
fn device_ref(ordinal: usize, visible: Option<&str>) -> Option<DeviceRef> {
    let Some(list) = visible.map(str::trim).filter(|v| !v.is_empty()) else {
        return u32::try_from(ordinal).ok().map(DeviceRef::Index);
    };
    let entry = list.split(',').map(str::trim).nth(ordinal)?;
    Some(match entry.parse::<u32>() {
        Ok(index) => DeviceRef::Index(index),
        Err(_) => DeviceRef::Uuid(entry.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuda_ordinals_are_mapped_through_cuda_visible_devices() {
        assert_eq!(device_ref(1, None), Some(DeviceRef::Index(1)));
        assert_eq!(device_ref(0, Some("")), Some(DeviceRef::Index(0)));
        assert_eq!(device_ref(1, Some("3,5")), Some(DeviceRef::Index(5)));
        assert_eq!(
            device_ref(0, Some("GPU-abc, 2")),
            Some(DeviceRef::Uuid("GPU-abc".into()))
        );
        assert_eq!(device_ref(2, Some("3,5")), None);
    }

    #[test]
    fn a_cpu_replica_has_no_gpu_probe() {
        assert!(GpuProbe::open(DeviceChoice::Cpu).is_none());
    }
}
