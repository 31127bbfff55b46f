//! The replica: one Stable Diffusion checkpoint loaded with candle and served over HTTP.
//!
//! - `allocator`: glibc malloc tuned so freed tensors are reused instead of unmapped.
//! - `engine`: the `Generator` trait between the HTTP server and the work, and its parameters.
//! - `model`: from a single-file checkpoint to callable text encoders, UNet and VAE.
//! - `pipeline`: schedulers, seeded noise, guidance and the sampling loop (the `Generator`).
//! - `server`: `/v1/generate`, health, models, metrics, admission.
//! - `test_model`: random-weight checkpoints in the real file layouts.

pub mod allocator;
pub mod device;
pub mod engine;
pub mod model;
pub mod pipeline;
pub mod server;
pub mod test_model;
