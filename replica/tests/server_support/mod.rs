//! Shared by the replica server tests: a test `Generator` that sleeps per step, honours
//! cancellation and publishes what it was asked, and a harness that serves it on 127.0.0.1:0.
// Each test crate uses part of this module.
#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use clap::Parser;
use sdplane_replica::engine::{
    EngineError, GenerationOutput, GenerationParams, Generator, LoadProgress, StepControl,
};
use sdplane_replica::server::{self, Loader, ReplicaArgs};
use sdplane_wire::api::{GenerationDefaults, GenerationLimits, ModelInfo, SchedulerKind};
use serde_json::Value;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
pub struct Cli {
    #[command(flatten)]
    pub args: ReplicaArgs,
}

/// Sleeps `step_delay` per step, honours `on_step`'s Cancel, and publishes counts.
pub struct StepGenerator {
    pub info: ModelInfo,
    pub step_delay: Duration,
    /// Generations started (the warm-up included).
    pub started: watch::Sender<u32>,
    /// Generations stopped by a Cancel from `on_step`.
    pub cancelled: watch::Sender<u32>,
    /// Parameters of the first call (the warm-up).
    pub first_call: std::sync::Mutex<Option<GenerationParams>>,
    pub steps_run: AtomicU32,
}

impl StepGenerator {
    pub fn new(step_delay: Duration) -> Arc<Self> {
        Arc::new(Self {
            info: ModelInfo {
                file: "tiny.safetensors".into(),
                model: "tiny".into(),
                family: "sd1".into(),
                family_label: "SD 1.x".into(),
                detected_by: Default::default(),
                prediction: "epsilon".into(),
                dtype: "f32".into(),
                device: "cpu".into(),
                native_width: 64,
                native_height: 64,
                inpainting: false,
                defaults: GenerationDefaults {
                    num_inference_steps: 4,
                    guidance_scale: 7.5,
                    scheduler: SchedulerKind::EulerA,
                    width: 64,
                    height: 64,
                },
                limits: GenerationLimits {
                    min_side: 32,
                    max_side: 256,
                    max_steps: 200,
                    max_num_images: 4,
                    max_prompt_chars: 1000,
                },
            },
            step_delay,
            started: watch::channel(0).0,
            cancelled: watch::channel(0).0,
            first_call: std::sync::Mutex::new(None),
            steps_run: AtomicU32::new(0),
        })
    }
}

impl Generator for StepGenerator {
    fn model_info(&self) -> &ModelInfo {
        &self.info
    }

    /// One byte per latent pixel per image, times 1000: 256×256 → 65 MB.
    fn estimate_bytes(&self, p: &GenerationParams) -> u64 {
        u64::from(p.width) * u64::from(p.height) * u64::from(p.num_images) * 1000
    }

    fn generate(
        &self,
        params: &GenerationParams,
        on_step: &mut dyn FnMut(u32, u32) -> StepControl,
    ) -> Result<GenerationOutput, EngineError> {
        self.first_call
            .lock()
            .expect("lock")
            .get_or_insert_with(|| params.clone());
        if params.prompt == "panic, please" {
            panic!("the test generator was asked to panic");
        }
        self.started.send_modify(|n| *n += 1);
        for step in 1..=params.steps {
            std::thread::sleep(self.step_delay);
            self.steps_run.fetch_add(1, Ordering::SeqCst);
            if on_step(step, params.steps) == StepControl::Cancel {
                self.cancelled.send_modify(|n| *n += 1);
                return Err(EngineError::Cancelled);
            }
        }
        let pixel = image::Rgb([(params.seed % 256) as u8, 0, 0]);
        Ok(GenerationOutput {
            images: (0..params.num_images)
                .map(|_| image::RgbImage::from_pixel(params.width, params.height, pixel))
                .collect(),
            prompt_truncated: false,
            negative_prompt_truncated: false,
            denoising_steps: params.steps,
        })
    }
}

/// Holds the test loader halfway: `reached` fires at 50%, the load goes on when `release` does.
pub struct Gate {
    pub reached: tokio::sync::oneshot::Sender<()>,
    pub release: tokio::sync::oneshot::Receiver<Result<(), String>>,
}

pub fn gate() -> (
    Gate,
    tokio::sync::oneshot::Receiver<()>,
    tokio::sync::oneshot::Sender<Result<(), String>>,
) {
    let (reached, reached_rx) = tokio::sync::oneshot::channel();
    let (release_tx, release) = tokio::sync::oneshot::channel();
    (Gate { reached, release }, reached_rx, release_tx)
}

pub struct Replica {
    pub base: String,
    pub http: reqwest::Client,
    pub shutdown: CancellationToken,
    pub done: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Replica {
    /// Serve `generator` on 127.0.0.1:0; the load finishes when `release` fires (if given).
    pub async fn start(generator: Arc<StepGenerator>, flags: &[&str], gate: Option<Gate>) -> Self {
        let mut argv = vec![
            "replica",
            "--model",
            "/models/tiny.safetensors",
            "--listen",
            "127.0.0.1:0",
        ];
        argv.extend_from_slice(flags);
        let args = Cli::try_parse_from(argv).expect("flags parse").args;
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .expect("bind loopback");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let loader: Loader = Box::new(move |progress: LoadProgress<'_>| {
            progress(0.5, "unet");
            if let Some(Gate { reached, release }) = gate {
                let _ = reached.send(());
                release
                    .blocking_recv()
                    .map_err(|_| EngineError::Model("test dropped".into()))?
                    .map_err(EngineError::Model)?;
            }
            progress(1.0, "vae");
            Ok(generator as Arc<dyn Generator>)
        });
        let shutdown = CancellationToken::new();
        let done = tokio::spawn(server::serve(listener, args, loader, shutdown.clone()));
        Self {
            base,
            http: reqwest::Client::new(),
            shutdown,
            done,
        }
    }

    pub async fn started_ready(generator: Arc<StepGenerator>, flags: &[&str]) -> Self {
        let replica = Self::start(generator, flags, None).await;
        replica.wait_ready().await;
        replica
    }

    pub async fn wait_ready(&self) {
        // The client-side view of readiness is polling health, as a readiness probe does.
        for _ in 0..500 {
            let (status, body) = self.get_json("/v1/health").await;
            if status == 200 {
                assert_eq!(body["status"], "ready");
                return;
            }
            assert_ne!(body["status"], "failed", "{body}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("replica never became ready");
    }

    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .expect("GET");
        let status = r.status().as_u16();
        (status, r.json().await.expect("JSON body"))
    }

    /// A `'static` future, so it can be spawned while the test goes on.
    pub fn post(&self, body: Value) -> impl Future<Output = reqwest::Response> + Send + 'static {
        let request = self.http.post(format!("{}/v1/generate", self.base)).json(&body);
        async move { request.send().await.expect("POST") }
    }

    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.done.await.expect("serve task")
    }
}

pub async fn error_of(response: reqwest::Response) -> (u16, String, String) {
    let status = response.status().as_u16();
    let body: Value = response.json().await.expect("error body is JSON");
    assert_eq!(body["status"], "error", "{body}");
    (
        status,
        body["error"]["type"].as_str().unwrap_or("").into(),
        body["error"]["message"].as_str().unwrap_or("").into(),
    )
}

pub async fn wait_count(rx: &mut watch::Receiver<u32>, at_least: u32) {
    tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|n| *n >= at_least))
        .await
        .expect("event within 10 s")
        .expect("sender alive");
}
