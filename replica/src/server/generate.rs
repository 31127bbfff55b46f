//! `POST /v1/generate`: parse, validate, size-check, queue, run on a worker thread with a
//! cancel token (deadline, client gone, shutdown), then answer JSON or raw PNG with metrics.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use sdplane_wire::ErrorBody;
use sdplane_wire::api::{ComputeMetrics, GenerateRequest, GenerateResponse, ImageFormat, UsedParameters};
use tokio_util::sync::CancellationToken;

use super::admission::{Refused, RunPermit};
use super::error::ServerError;
use super::state::AppState;
use super::usage::QueryTimings;
use super::validate::{self, Validated};
use crate::engine::{EngineError, GenerationOutput, GenerationParams, Generator, StepControl};

const MIB: u64 = 1024 * 1024;

/// Generate images from a prompt.
#[utoipa::path(
    post,
    path = "/v1/generate",
    request_body = GenerateRequest,
    responses(
        (status = 200, description = "Images, with the parameters used and compute metrics", content(
            (GenerateResponse = "application/json"),
            (Vec<u8> = "image/png"),
        )),
        (status = 400, description = "Invalid JSON or parameter (named)", body = ErrorBody),
        (status = 413, description = "Body over --max-body-bytes", body = ErrorBody),
        (status = 415, description = "Body not declared as application/json", body = ErrorBody),
        (status = 422, description = "Request needs more memory than the replica may use", body = ErrorBody),
        (status = 429, description = "Queue full; see Retry-After", body = ErrorBody),
        (status = 503, description = "Loading, failed or shutting down; see Retry-After", body = ErrorBody),
        (status = 504, description = "Over --request-timeout; the work was cancelled", body = ErrorBody),
    )
)]
pub async fn generate(
    State(state): State<Arc<AppState>>,
    body: Result<Json<GenerateRequest>, JsonRejection>,
) -> Response {
    let response = match answer(&state, body).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    };
    state
        .metrics
        .requests
        .with_label_values(&[response.status().as_str()])
        .inc();
    response
}

async fn answer(
    state: &AppState,
    body: Result<Json<GenerateRequest>, JsonRejection>,
) -> Result<Response, ServerError> {
    let usage_start = state.usage.start();
    let arrived = tokio::time::Instant::now();
    let deadline = arrived + state.request_timeout;
    let Json(request) = body.map_err(from_rejection)?;
    let generator = state.generator()?;
    let Validated { params, format } =
        validate::validate(&request, generator.model_info(), validate::random_seed)?;

    let needed = generator.estimate_bytes(&params);
    let budget = state.memory_budget();
    if needed > budget {
        return Err(ServerError::TooLargeForMemory {
            needed_mb: needed.div_ceil(MIB),
            budget_mb: budget / MIB,
        });
    }

    let ticket = state.admission.enter().map_err(|refused| match refused {
        Refused::QueueFull {
            waiting,
            retry_after_secs,
        } => ServerError::QueueFull {
            waiting,
            retry_after_secs,
        },
        Refused::Closed => ServerError::ShuttingDown,
    })?;
    let timeout = || ServerError::Timeout {
        seconds: state.request_timeout.as_secs_f64(),
    };
    let permit = tokio::select! {
        permit = ticket.wait() => permit,
        () = tokio::time::sleep_until(deadline) => return Err(timeout()),
    };
    let queue_seconds = arrived.elapsed().as_secs_f64();
    state.metrics.queue_seconds.observe(queue_seconds);

    // Cancelled when this future is dropped (client gone), at the deadline, or at shutdown.
    let token = state.work.child_token();
    let _cancel_on_drop = token.clone().drop_guard();
    let job = Job {
        generator: Arc::clone(&generator),
        params,
        token: token.clone(),
        steps: state.metrics.steps.clone(),
    };
    let mut worker = tokio::task::spawn_blocking(move || job.run(permit));
    let finished = tokio::select! {
        joined = &mut worker => joined,
        () = tokio::time::sleep_until(deadline) => {
            // The worker stops after its current step and frees its permit then.
            token.cancel();
            return Err(timeout());
        }
    };
    let done = finished
        .map_err(|e| ServerError::Internal(format!("generation worker died: {e}")))?
        .map_err(ServerError::from_engine)?;

    state.admission.record_generation(done.inference_seconds);
    state.metrics.generation_seconds.observe(done.inference_seconds);
    let metrics = state.usage.finish(
        &usage_start,
        QueryTimings {
            queue_seconds,
            inference_seconds: done.inference_seconds,
            denoising_steps: done.output.denoising_steps,
        },
    );
    tracing::info!(
        seed = done.params.seed,
        steps = done.output.denoising_steps,
        queue_seconds,
        inference_seconds = done.inference_seconds,
        "generated"
    );
    let model = generator.model_info().model.clone();
    Ok(respond(format, model, request.prompt, done, metrics))
}

/// What a worker runs: the generation and the PNG encoding, off the async runtime.
struct Job {
    generator: Arc<dyn Generator>,
    params: GenerationParams,
    token: CancellationToken,
    steps: prometheus::IntCounter,
}

struct Done {
    params: GenerationParams,
    output: GenerationOutput,
    pngs: Vec<Vec<u8>>,
    inference_seconds: f64,
}

impl Job {
    fn run(self, permit: RunPermit) -> Result<Done, EngineError> {
        // Held until the work really stops, so a cancelled request keeps its worker busy
        // only up to its next step and never lets more than --max-concurrency run.
        let _permit = permit;
        let started = std::time::Instant::now();
        let (token, steps) = (&self.token, &self.steps);
        let mut on_step = |_done: u32, _total: u32| {
            steps.inc();
            if token.is_cancelled() {
                StepControl::Cancel
            } else {
                StepControl::Continue
            }
        };
        let output = self.generator.generate(&self.params, &mut on_step)?;
        let inference_seconds = started.elapsed().as_secs_f64();
        if output.images.is_empty() {
            return Err(EngineError::Model("the generator returned no image".into()));
        }
        let pngs = output
            .images
            .iter()
            .map(encode_png)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Done {
            params: self.params,
            output,
            pngs,
            inference_seconds,
        })
    }
}

fn encode_png(image: &image::RgbImage) -> Result<Vec<u8>, EngineError> {
    let mut out = std::io::Cursor::new(Vec::new());
    image
        .write_to(&mut out, image::ImageFormat::Png)
        .map_err(|e| EngineError::Model(format!("cannot encode the PNG: {e}")))?;
    Ok(out.into_inner())
}

fn respond(
    format: ImageFormat,
    model: String,
    prompt: String,
    done: Done,
    metrics: ComputeMetrics,
) -> Response {
    let mut headers = HeaderMap::new();
    for (name, seconds) in [
        ("x-queue-time", metrics.queue_seconds),
        ("x-inference-time", metrics.inference_seconds),
        ("x-total-time", metrics.query_duration_seconds),
    ] {
        if let Ok(value) = HeaderValue::from_str(&format!("{seconds:.6}")) {
            headers.insert(name, value);
        }
    }
    let Done {
        params,
        output,
        mut pngs,
        ..
    } = done;
    match format {
        ImageFormat::Png => {
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("image/png"));
            headers.insert("x-seed", HeaderValue::from(params.seed));
            // Numbers and ASCII names only, so the JSON is always a valid header value.
            if let Ok(json) = serde_json::to_string(&metrics)
                && let Ok(value) = HeaderValue::from_str(&json)
            {
                headers.insert("x-compute-metrics", value);
            }
            let first = pngs.swap_remove(0);
            (StatusCode::OK, headers, first).into_response()
        }
        ImageFormat::Base64 => {
            let images: Vec<String> = pngs
                .iter()
                .map(|png| {
                    format!(
                        "data:image/png;base64,{}",
                        base64::engine::general_purpose::STANDARD.encode(png)
                    )
                })
                .collect();
            let body = GenerateResponse {
                status: "success".into(),
                model,
                image: images[0].clone(),
                images,
                prompt,
                parameters: UsedParameters {
                    negative_prompt: params.negative_prompt,
                    num_inference_steps: params.steps,
                    guidance_scale: params.guidance_scale,
                    width: params.width,
                    height: params.height,
                    seed: params.seed,
                    scheduler: params.scheduler,
                    num_images: params.num_images,
                    strength: params.init_image.as_ref().map(|_| params.strength),
                    prompt_truncated: output.prompt_truncated,
                    negative_prompt_truncated: output.negative_prompt_truncated,
                },
                compute_metrics: metrics,
            };
            (StatusCode::OK, headers, Json(body)).into_response()
        }
    }
}

/// axum's JSON rejections as this API's errors; the messages name the field (serde's path).
fn from_rejection(rejection: JsonRejection) -> ServerError {
    match rejection {
        JsonRejection::MissingJsonContentType(e) => ServerError::UnsupportedMediaType(e.body_text()),
        JsonRejection::BytesRejection(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            ServerError::BodyTooLarge(e.body_text())
        }
        other => ServerError::InvalidJson(other.body_text()),
    }
}
