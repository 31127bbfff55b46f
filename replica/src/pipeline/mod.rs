//! Sampling: schedulers, seeded noise, classifier-free guidance, img2img, and the candle
//! `Generator`.

pub mod generate_cli;
