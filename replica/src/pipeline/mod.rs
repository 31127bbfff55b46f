//! Sampling: schedulers, seeded noise, classifier-free guidance, img2img, inpainting, and the
//! candle `Generator`.
//!
//! - `scheduler`: DDIM, Euler, Euler ancestral, DPM++ 2M (Karras), matching diffusers.
//! - `noise`: the seeded Gaussian stream every random draw comes from.
//! - `family`: per-family defaults, limits, VAE scale and scheduler spacing.
//! - `sampling`: the denoising loop with guidance, img2img and cancellation.
//! - `inpaint`: mask and masked-image channels for 9-channel inpainting UNets.
//! - `generator`: `CandleGenerator`, the production `Generator`.
//! - `npy`: the float32 `.npy` reader for `--init-latents`.
//! - `generate_cli`: `sdplane generate`.

pub mod family;
pub mod generate_cli;
pub mod generator;
pub mod inpaint;
pub mod noise;
pub mod npy;
pub mod sampling;
pub mod scheduler;

#[cfg(test)]
mod tests;

pub use generator::CandleGenerator;
pub use sampling::Timings;
