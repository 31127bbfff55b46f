//! `compute_metrics`: what one query cost this process — CPU time over wall time, resident
//! memory, and, on a GPU, memory, utilisation and the energy counter's difference.

use std::sync::{Mutex, PoisonError};

use sdplane_wire::api::ComputeMetrics;
use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate, System};

use super::gpu::{GpuProbe, GpuSample};

const MIB: f64 = 1024.0 * 1024.0;

/// Reads this process's CPU time and memory, and the GPU where there is one.
#[derive(Debug)]
pub struct UsageProbe {
    /// `None` where sysinfo cannot read this platform; CPU and memory then read 0.
    system: Mutex<Option<System>>,
    pid: Option<Pid>,
    num_cpus: u32,
    gpu: Option<GpuProbe>,
}

/// A reading at the start of a query.
#[derive(Debug, Clone)]
pub struct UsageStart {
    at: std::time::Instant,
    cpu_millis: Option<u64>,
    gpu_energy_millijoules: Option<u64>,
}

/// What happened between start and end, with the timings measured by the server.
#[derive(Debug, Clone, Copy)]
pub struct QueryTimings {
    pub queue_seconds: f64,
    pub inference_seconds: f64,
    pub denoising_steps: u32,
}

impl UsageProbe {
    pub fn new(gpu: Option<GpuProbe>) -> Self {
        let system = System::new().ok();
        if system.is_none() {
            tracing::warn!("sysinfo cannot read this process; CPU and memory metrics are 0");
        }
        Self {
            system: Mutex::new(system),
            pid: sysinfo::get_current_pid().ok(),
            // Honours CPU affinity and cgroup quotas, unlike a count of the host's cores.
            num_cpus: std::thread::available_parallelism()
                .map_or(1, |n| u32::try_from(n.get()).unwrap_or(u32::MAX)),
            gpu,
        }
    }

    /// The GPU probe, if a GPU is in use.
    pub fn gpu(&self) -> Option<&GpuProbe> {
        self.gpu.as_ref()
    }

    /// Call when a query arrives.
    pub fn start(&self) -> UsageStart {
        let (cpu_millis, _) = self.process_sample();
        UsageStart {
            at: std::time::Instant::now(),
            cpu_millis,
            gpu_energy_millijoules: self
                .gpu
                .as_ref()
                .and_then(GpuProbe::sample)
                .and_then(|s| s.energy_millijoules),
        }
    }

    /// Call when the answer is ready.
    pub fn finish(&self, start: &UsageStart, timings: QueryTimings) -> ComputeMetrics {
        let wall = start.at.elapsed().as_secs_f64();
        let (cpu_millis, rss_bytes) = self.process_sample();
        let cpu_percent = match (start.cpu_millis, cpu_millis) {
            (Some(a), Some(b)) if wall > 0.0 => b.saturating_sub(a) as f64 / 1000.0 / wall * 100.0,
            _ => 0.0,
        };
        let gpu = self.gpu.as_ref().and_then(GpuProbe::sample);
        let energy = gpu_energy_joules(start.gpu_energy_millijoules, gpu.as_ref());
        ComputeMetrics {
            query_duration_seconds: wall,
            replica_cpu_percent: cpu_percent,
            replica_memory_mb: rss_bytes.map_or(0.0, |b| b as f64 / MIB),
            replica_num_cpus: self.num_cpus,
            replica_gpu_memory_allocated_mb: gpu.as_ref().and_then(|g| g.process_memory_mb),
            replica_gpu_memory_reserved_mb: gpu.as_ref().map(|g| g.memory_used_mb),
            replica_gpu_memory_total_mb: gpu.as_ref().map(|g| g.memory_total_mb),
            replica_gpu_utilization_percent: gpu.as_ref().and_then(|g| g.utilization_percent),
            replica_gpu_energy_joules: energy,
            queue_seconds: timings.queue_seconds,
            inference_seconds: timings.inference_seconds,
            denoising_steps: timings.denoising_steps,
            cold_start_seconds: None,
        }
    }

    /// Memory the host can still give (the default memory budget on CPU).
    pub fn available_memory_bytes(&self) -> Option<u64> {
        let mut guard = self.system.lock().unwrap_or_else(PoisonError::into_inner);
        let system = guard.as_mut()?;
        system.refresh_memory();
        Some(system.available_memory()).filter(|&b| b > 0)
    }

    /// (accumulated CPU milliseconds, resident bytes) of this process.
    fn process_sample(&self) -> (Option<u64>, Option<u64>) {
        let Some(pid) = self.pid else { return (None, None) };
        let mut guard = self.system.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(system) = guard.as_mut() else {
            return (None, None);
        };
        system.refresh_processes_specifics(
            ProcessesToUpdate::Some(&[pid]),
            false,
            ProcessRefreshKind::nothing().with_cpu().with_memory(),
        );
        match system.process(pid) {
            Some(p) => (Some(p.accumulated_cpu_time()), Some(p.memory())),
            None => (None, None),
        }
    }
}

/// Joules between two readings of NVML's millijoule counter.
fn gpu_energy_joules(start_mj: Option<u64>, end: Option<&GpuSample>) -> Option<f64> {
    let end_mj = end?.energy_millijoules?;
    Some(end_mj.checked_sub(start_mj?)? as f64 / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_work_shows_as_cpu_percent_and_memory_without_gpu_fields() {
        let probe = UsageProbe::new(None);
        let start = probe.start();
        // Spin for a while so the kernel's 10 ms CPU-time ticks register.
        let until = std::time::Instant::now() + std::time::Duration::from_millis(200);
        let mut x = 0u64;
        while std::time::Instant::now() < until {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
        let m = probe.finish(
            &start,
            QueryTimings {
                queue_seconds: 0.0,
                inference_seconds: 0.2,
                denoising_steps: 3,
            },
        );
        assert!(m.replica_cpu_percent > 10.0, "cpu {}", m.replica_cpu_percent);
        assert!(m.replica_memory_mb > 1.0, "rss {}", m.replica_memory_mb);
        assert!(m.replica_num_cpus >= 1);
        assert!(m.query_duration_seconds >= 0.2);
        assert_eq!(m.denoising_steps, 3);
        assert_eq!(m.replica_gpu_memory_total_mb, None);
        assert_eq!(m.replica_gpu_energy_joules, None);
    }

    #[test]
    fn energy_is_the_counter_difference_and_null_when_unknown() {
        let sample = |mj| GpuSample {
            name: None,
            memory_used_mb: 1.0,
            memory_total_mb: 2.0,
            process_memory_mb: None,
            utilization_percent: None,
            energy_millijoules: mj,
        };
        assert_eq!(
            gpu_energy_joules(Some(1_000), Some(&sample(Some(3_500)))),
            Some(2.5)
        );
        assert_eq!(gpu_energy_joules(None, Some(&sample(Some(3_500)))), None);
        assert_eq!(gpu_energy_joules(Some(1_000), Some(&sample(None))), None);
        assert_eq!(gpu_energy_joules(Some(1_000), None), None);
    }
}
