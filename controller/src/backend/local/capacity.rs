//! Where a new replica fits on this machine: on a GPU with enough free memory (NVML) or, on a
//! CPU-only machine, within a memory budget. The fit decisions are pure functions over a snapshot
//! so they are table-tested; NVML and the RAM total are read at the edges.

use nvml_wrapper::Nvml;

/// What this machine offers replicas.
pub enum Capacity {
    /// GPUs found by NVML: one replica is placed on one GPU (`CUDA_VISIBLE_DEVICES`).
    Gpus(Box<Nvml>),
    /// CPU only: replicas share a memory budget.
    Memory { budget_mb: u64 },
}

impl std::fmt::Debug for Capacity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Gpus(nvml) => write!(f, "Gpus({:?})", nvml.device_count().ok()),
            Self::Memory { budget_mb } => write!(f, "Memory {{ budget_mb: {budget_mb} }}"),
        }
    }
}

/// A replica that already holds (or is about to hold) memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reservation {
    pub gpu: Option<u32>,
    pub memory_mb: u64,
    /// Still loading: its memory is not yet visible in NVML's free figure.
    pub loading: bool,
}

/// Where to put a replica, or how much was free when it did not fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fit {
    /// Run it, on this GPU when there is one.
    Place { gpu: Option<u32> },
    /// Nothing fits; the most free memory anywhere, in MiB.
    Full { free_mb: u64 },
}

impl Capacity {
    /// GPUs when allowed and NVML initialises and sees at least one, otherwise the memory budget
    /// (`budget_mb`, or the machine's RAM less a tenth kept for the OS and the controller).
    pub fn detect(budget_mb: Option<u64>, use_gpus: bool) -> Self {
        let nvml = if use_gpus {
            Nvml::init()
        } else {
            Err(nvml_wrapper::error::NvmlError::Uninitialized)
        };
        match nvml {
            Ok(nvml) if nvml.device_count().unwrap_or(0) > 0 => {
                tracing::info!(
                    gpus = nvml.device_count().unwrap_or(0),
                    "placing replicas on GPUs (NVML)"
                );
                return Self::Gpus(Box::new(nvml));
            }
            Ok(_) => tracing::info!("NVML sees no GPU; replicas share the memory budget"),
            Err(e) if use_gpus => tracing::info!(reason = %e, "no NVML; replicas share the memory budget"),
            Err(_) => {
                tracing::info!("GPUs not used (--replica-device cpu); replicas share the memory budget")
            }
        }
        let budget_mb = budget_mb.unwrap_or_else(|| total_ram_mb() / 10 * 9);
        tracing::info!(budget_mb, "replica memory budget");
        Self::Memory { budget_mb }
    }

    /// How a replica holds its weights here: f16 on a GPU, f32 on CPU (the replica's default
    /// precision per device, `replica/src/device.rs`).
    pub fn bytes_per_parameter(&self) -> u64 {
        match self {
            Self::Gpus(_) => 2,
            Self::Memory { .. } => 4,
        }
    }

    /// Where a replica needing `need_mb` fits beside `live`.
    pub fn fit(&self, need_mb: u64, live: &[Reservation]) -> Fit {
        match self {
            Self::Memory { budget_mb } => fit_memory(*budget_mb, need_mb, live),
            Self::Gpus(nvml) => {
                let free: Vec<u64> = (0..nvml.device_count().unwrap_or(0))
                    .map(|i| {
                        nvml.device_by_index(i)
                            .and_then(|d| d.memory_info())
                            .map(|m| m.free / (1024 * 1024))
                            .unwrap_or(0)
                    })
                    .collect();
                fit_gpus(&free, need_mb, live)
            }
        }
    }
}

fn total_ram_mb() -> u64 {
    use sysinfo::{MemoryRefreshKind, RefreshKind, System};
    System::new_with_specifics(RefreshKind::nothing().with_memory(MemoryRefreshKind::everything()))
        .map(|s| s.total_memory() / (1024 * 1024))
        .unwrap_or(0)
}

/// CPU budget: everything live counts against it.
pub fn fit_memory(budget_mb: u64, need_mb: u64, live: &[Reservation]) -> Fit {
    let used: u64 = live.iter().map(|r| r.memory_mb).sum();
    let free_mb = budget_mb.saturating_sub(used);
    if need_mb <= free_mb {
        Fit::Place { gpu: None }
    } else {
        Fit::Full { free_mb }
    }
}

/// GPUs: NVML's free memory per GPU, less what replicas still loading there will take; the GPU
/// with the most room wins (spreads apps out, keeps big holes for big models).
pub fn fit_gpus(free_mb: &[u64], need_mb: u64, live: &[Reservation]) -> Fit {
    let room = free_mb.iter().enumerate().map(|(i, free)| {
        let gpu = u32::try_from(i).unwrap_or(u32::MAX);
        let pending: u64 = live
            .iter()
            .filter(|r| r.loading && r.gpu == Some(gpu))
            .map(|r| r.memory_mb)
            .sum();
        (gpu, free.saturating_sub(pending))
    });
    match room.max_by_key(|(gpu, room)| (*room, std::cmp::Reverse(*gpu))) {
        Some((gpu, room)) if room >= need_mb => Fit::Place { gpu: Some(gpu) },
        Some((_, room)) => Fit::Full { free_mb: room },
        None => Fit::Full { free_mb: 0 },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cpu(memory_mb: u64) -> Reservation {
        Reservation {
            gpu: None,
            memory_mb,
            loading: false,
        }
    }

    #[test]
    fn memory_budget_counts_every_live_replica() {
        let cases = [
            (1000, 400, vec![], Fit::Place { gpu: None }),
            (1000, 400, vec![cpu(600)], Fit::Place { gpu: None }),
            (1000, 401, vec![cpu(600)], Fit::Full { free_mb: 400 }),
            (1000, 1, vec![cpu(600), cpu(600)], Fit::Full { free_mb: 0 }),
        ];
        for (budget, need, live, want) in cases {
            assert_eq!(
                fit_memory(budget, need, &live),
                want,
                "budget {budget} need {need} live {live:?}"
            );
        }
    }

    #[test]
    fn gpu_with_most_room_is_chosen_and_loading_replicas_are_subtracted() {
        let loading_on_1 = Reservation {
            gpu: Some(1),
            memory_mb: 7000,
            loading: true,
        };
        let loaded_on_0 = Reservation {
            gpu: Some(0),
            memory_mb: 7000,
            loading: false,
        };
        let cases = [
            (vec![8000, 10_000], 5000, vec![], Fit::Place { gpu: Some(1) }),
            (
                vec![8000, 10_000],
                5000,
                vec![loading_on_1],
                Fit::Place { gpu: Some(0) },
            ),
            // A loaded replica is already inside NVML's free figure: not subtracted twice.
            (
                vec![8000, 10_000],
                5000,
                vec![loaded_on_0],
                Fit::Place { gpu: Some(1) },
            ),
            (
                vec![4000, 10_000],
                5000,
                vec![loading_on_1],
                Fit::Full { free_mb: 4000 },
            ),
            (vec![], 1, vec![], Fit::Full { free_mb: 0 }),
        ];
        for (free, need, live, want) in cases {
            assert_eq!(
                fit_gpus(&free, need, &live),
                want,
                "free {free:?} need {need} live {live:?}"
            );
        }
    }

    #[test]
    fn equal_room_prefers_the_lowest_gpu_index() {
        assert_eq!(fit_gpus(&[9000, 9000], 100, &[]), Fit::Place { gpu: Some(0) });
    }
}
