//! The replica's Prometheus metrics, registered on the one `Registry` the process passes in.
//! Gauges that mirror live state (queue depth, in-flight, GPU) are set when scraped.

use prometheus::{Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

/// Handles to every replica metric.
#[derive(Debug, Clone)]
pub struct ReplicaMetrics {
    /// `POST /v1/generate` answers by HTTP status code.
    pub requests: IntCounterVec,
    /// Seconds a successful generation ran on a worker.
    pub generation_seconds: Histogram,
    /// Seconds a request waited for a worker.
    pub queue_seconds: Histogram,
    pub queue_depth: IntGauge,
    pub in_flight: IntGauge,
    /// Denoising steps run, cancelled generations included.
    pub steps: IntCounter,
    /// Seconds the model took to load and warm up.
    pub load_seconds: Gauge,
    /// Present only where a GPU is in use.
    pub gpu: Option<GpuMetrics>,
}

/// GPU gauges, registered only where the replica runs on a GPU NVML can see.
#[derive(Debug, Clone)]
pub struct GpuMetrics {
    pub memory_used_bytes: Gauge,
    pub memory_total_bytes: Gauge,
    pub utilization_percent: Gauge,
}

impl ReplicaMetrics {
    /// Register every metric on `registry`.
    pub fn register(registry: &Registry, with_gpu: bool) -> prometheus::Result<Self> {
        let requests = IntCounterVec::new(
            Opts::new(
                "sdplane_replica_requests_total",
                "Generate requests answered, by HTTP status.",
            ),
            &["status"],
        )?;
        // Powers of two from 50 ms to ~7 min: tiny CPU test models up to SDXL at 50 steps on CPU.
        let generation_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "sdplane_replica_generation_seconds",
                "Seconds a generation ran on a worker.",
            )
            .buckets(prometheus::exponential_buckets(0.05, 2.0, 14)?),
        )?;
        // Powers of two from 10 ms to ~2.7 min: waits of one short to many long generations.
        let queue_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "sdplane_replica_queue_seconds",
                "Seconds a request waited for a worker.",
            )
            .buckets(prometheus::exponential_buckets(0.01, 2.0, 15)?),
        )?;
        let queue_depth = IntGauge::new("sdplane_replica_queue_depth", "Requests waiting for a worker.")?;
        let in_flight = IntGauge::new("sdplane_replica_in_flight", "Generations running now.")?;
        let steps = IntCounter::new("sdplane_replica_denoising_steps_total", "Denoising steps run.")?;
        let load_seconds = Gauge::new(
            "sdplane_replica_model_load_seconds",
            "Seconds the model took to load and warm up.",
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(generation_seconds.clone()))?;
        registry.register(Box::new(queue_seconds.clone()))?;
        registry.register(Box::new(queue_depth.clone()))?;
        registry.register(Box::new(in_flight.clone()))?;
        registry.register(Box::new(steps.clone()))?;
        registry.register(Box::new(load_seconds.clone()))?;
        let gpu = if with_gpu {
            Some(GpuMetrics::register(registry)?)
        } else {
            None
        };
        Ok(Self {
            requests,
            generation_seconds,
            queue_seconds,
            queue_depth,
            in_flight,
            steps,
            load_seconds,
            gpu,
        })
    }
}

impl GpuMetrics {
    fn register(registry: &Registry) -> prometheus::Result<Self> {
        let memory_used_bytes = Gauge::new(
            "sdplane_replica_gpu_memory_used_bytes",
            "GPU memory in use (all processes), from NVML.",
        )?;
        let memory_total_bytes =
            Gauge::new("sdplane_replica_gpu_memory_total_bytes", "GPU memory installed.")?;
        let utilization_percent = Gauge::new(
            "sdplane_replica_gpu_utilization_percent",
            "GPU busy percent over NVML's last sample.",
        )?;
        registry.register(Box::new(memory_used_bytes.clone()))?;
        registry.register(Box::new(memory_total_bytes.clone()))?;
        registry.register(Box::new(utilization_percent.clone()))?;
        Ok(Self {
            memory_used_bytes,
            memory_total_bytes,
            utilization_percent,
        })
    }
}

/// Prometheus text exposition of everything in `registry`.
pub fn encode(registry: &Registry) -> Result<String, prometheus::Error> {
    prometheus::TextEncoder::new().encode_to_string(&registry.gather())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_exposed_under_an_sdplane_replica_name() {
        let registry = Registry::new();
        let m = ReplicaMetrics::register(&registry, false).expect("register");
        m.requests.with_label_values(&["200"]).inc();
        m.generation_seconds.observe(0.3);
        m.queue_seconds.observe(0.0);
        let text = encode(&registry).expect("encode");
        for name in [
            "sdplane_replica_requests_total{status=\"200\"} 1",
            "sdplane_replica_generation_seconds_bucket",
            "sdplane_replica_queue_seconds_count 1",
            "sdplane_replica_queue_depth 0",
            "sdplane_replica_in_flight 0",
            "sdplane_replica_denoising_steps_total 0",
            "sdplane_replica_model_load_seconds 0",
        ] {
            assert!(text.contains(name), "missing {name} in\n{text}");
        }
        assert!(!text.contains("gpu"), "no GPU gauges without a GPU");
        let with_gpu = Registry::new();
        ReplicaMetrics::register(&with_gpu, true).expect("register with gpu");
        assert!(
            encode(&with_gpu)
                .expect("encode")
                .contains("sdplane_replica_gpu_memory_total_bytes")
        );
    }
}
