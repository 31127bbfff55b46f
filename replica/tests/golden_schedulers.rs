//! Our schedulers against diffusers' (golden data from `tests/golden/schedulers.py`): the
//! training schedule, each case's timesteps, sigmas and initial sigma, and whole denoising
//! loops driven by a fixed toy model `0.9·tanh(x) + 0.1·t/1000`, text-to-image and img2img.

use candle_core::{Device, Tensor};
use sdplane_replica::pipeline::scheduler::{self, SchedulerConfig, Spacing, schedule};
use sdplane_wire::api::SchedulerKind;
use sdplane_wire::checkpoint::Prediction;
use serde::Deserialize;

#[derive(Deserialize)]
struct Golden {
    alphas_cumprod: Vec<f64>,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    scheduler: SchedulerKind,
    spacing: String,
    prediction: String,
    steps: usize,
    timesteps: Vec<f64>,
    sigmas: Option<Vec<f64>>,
    init_noise_sigma: f64,
    sample: Vec<f32>,
    noise: Option<Vec<Vec<f32>>>,
    #[serde(rename = "final")]
    final_: Vec<f32>,
    img2img: Option<Img2Img>,
}

#[derive(Deserialize)]
struct Img2Img {
    strength: f64,
    start: usize,
    clean: Vec<f32>,
    noise: Vec<f32>,
    noised: Vec<f32>,
    #[serde(rename = "final")]
    final_: Vec<f32>,
}

fn golden() -> Golden {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/golden/schedulers.json"
    ))
    .expect("golden file");
    serde_json::from_str(&text).expect("golden json")
}

impl Case {
    fn config(&self) -> SchedulerConfig {
        let spacing = match self.spacing.as_str() {
            "leading" => Spacing::Leading,
            "trailing" => Spacing::Trailing,
            "linspace" => Spacing::Linspace,
            other => panic!("spacing {other}"),
        };
        let prediction = if self.prediction == "v" {
            Prediction::V
        } else {
            Prediction::Epsilon
        };
        SchedulerConfig {
            kind: self.scheduler,
            prediction,
            spacing,
            steps_offset: 1,
        }
    }

    fn name(&self) -> String {
        format!(
            "{} {} {} {} steps",
            self.scheduler.as_str(),
            self.spacing,
            self.prediction,
            self.steps
        )
    }
}

fn tensor(values: &[f32]) -> Tensor {
    Tensor::from_slice(values, values.len(), &Device::Cpu).expect("tensor")
}

fn values(t: &Tensor) -> Vec<f32> {
    t.to_vec1::<f32>().expect("values")
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn max_rel_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "lengths");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs() / y.abs().max(1e-3))
        .fold(0.0, f64::max)
}

/// Run steps `from..` of `sched` over `x` with the toy model and fixed noise rows.
fn run_loop(sched: &mut dyn scheduler::Scheduler, mut x: Tensor, from: usize, noise: &[Vec<f32>]) -> Tensor {
    let steps = sched.timesteps().len();
    for index in from..steps {
        let t = sched.timesteps()[index];
        let input = sched.scale_model_input(&x, index).expect("scale");
        let out = (input.tanh().expect("tanh").affine(0.9, 0.1 * t / 1000.0)).expect("toy model");
        let row = noise.get(index).cloned().unwrap_or_default();
        let mut fresh = || Ok(tensor(&row));
        x = sched.step(&out, index, &x, &mut fresh).expect("step");
    }
    x
}

#[test]
fn the_training_schedule_matches_diffusers_float32_within_1e_5_relative() {
    let ours = schedule::alphas_cumprod();
    let err = max_rel_diff(&ours, &golden().alphas_cumprod);
    println!("alphas_cumprod max relative error {err:.2e}");
    assert!(err < 1e-5, "{err}");
}

#[test]
fn timesteps_sigmas_and_initial_sigma_match_diffusers_for_every_case() {
    let g = golden();
    let mut worst: f64 = 0.0;
    for case in &g.cases {
        let sched = scheduler::build(case.config(), case.steps);
        // diffusers keeps Euler's fractional `linspace` timesteps in float32: 1e-4 of 1000.
        let ours = sched.timesteps();
        assert_eq!(ours.len(), case.timesteps.len(), "steps of {}", case.name());
        let t_err = ours
            .iter()
            .zip(&case.timesteps)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        assert!(
            t_err < 1e-4 * 1000.0,
            "timesteps of {}: ours {ours:?} theirs {:?}",
            case.name(),
            case.timesteps
        );
        let init_err = (sched.init_noise_sigma() - case.init_noise_sigma).abs() / case.init_noise_sigma;
        assert!(
            init_err < 5e-5,
            "init sigma of {}: {} vs {}",
            case.name(),
            sched.init_noise_sigma(),
            case.init_noise_sigma
        );
        worst = worst.max(init_err);
    }
    println!(
        "{} cases, initial sigma max relative error {worst:.2e}",
        g.cases.len()
    );
}

#[test]
fn sigma_tables_match_diffusers_float32_within_5e_5_relative() {
    let g = golden();
    let mut worst: f64 = 0.0;
    for case in g.cases.iter().filter(|c| c.sigmas.is_some()) {
        let config = case.config();
        let ours = match config.kind {
            SchedulerKind::Euler | SchedulerKind::EulerA => {
                scheduler::euler::Euler::new(config, case.steps, config.kind == SchedulerKind::EulerA)
                    .sigmas()
                    .to_vec()
            }
            _ => scheduler::dpm::DpmSolver::new(
                config,
                case.steps,
                config.kind == SchedulerKind::Dpmpp2mKarras,
            )
            .sigmas()
            .to_vec(),
        };
        let theirs = case.sigmas.as_deref().unwrap_or_default();
        let err = max_rel_diff(&ours, theirs);
        assert!(
            err < 5e-5,
            "sigmas of {}: {err}\n ours {ours:?}\n theirs {theirs:?}",
            case.name()
        );
        worst = worst.max(err);
    }
    println!("sigma tables max relative error {worst:.2e}");
}

#[test]
fn whole_denoising_loops_match_diffusers_within_1e_4() {
    let g = golden();
    let mut worst = 0.0f32;
    for case in &g.cases {
        let mut sched = scheduler::build(case.config(), case.steps);
        let x = tensor(&case.sample)
            .affine(sched.init_noise_sigma(), 0.0)
            .expect("init");
        let noise = case.noise.clone().unwrap_or_default();
        let out = values(&run_loop(sched.as_mut(), x, 0, &noise));
        let err = max_abs_diff(&out, &case.final_);
        // Relative to the sample's scale: an initial sigma of ~14.6 carries float32 rounding.
        let scale = case.final_.iter().fold(1.0f32, |m, v| m.max(v.abs()));
        assert!(
            err / scale < 1e-4,
            "{}: max abs error {err}\n ours {out:?}\n theirs {:?}",
            case.name(),
            case.final_
        );
        worst = worst.max(err / scale);
    }
    println!(
        "{} loops, max error relative to the sample's scale {worst:.2e}",
        g.cases.len()
    );
}

#[test]
fn img2img_noising_and_truncated_loops_match_diffusers_within_1e_4() {
    let g = golden();
    let mut worst = 0.0f32;
    let mut checked = 0;
    for case in &g.cases {
        let Some(img) = &case.img2img else { continue };
        assert_eq!(
            schedule::img2img_start(case.steps, img.strength),
            img.start,
            "start of {}",
            case.name()
        );
        let mut sched = scheduler::build(case.config(), case.steps);
        let noised = sched
            .add_noise(&tensor(&img.clean), &tensor(&img.noise), img.start)
            .expect("add_noise");
        let err = max_abs_diff(&values(&noised), &img.noised);
        assert!(err < 1e-4, "add_noise of {}: {err}", case.name());
        let noise = case.noise.clone().unwrap_or_default();
        let out = values(&run_loop(sched.as_mut(), tensor(&img.noised), img.start, &noise));
        let err = max_abs_diff(&out, &img.final_);
        assert!(
            err < 1e-4,
            "img2img loop of {}: {err}\n ours {out:?}\n theirs {:?}",
            case.name(),
            img.final_
        );
        worst = worst.max(err);
        checked += 1;
    }
    assert!(checked > 50, "only {checked} img2img cases");
    println!("{checked} img2img loops, max abs error {worst:.2e}");
}
