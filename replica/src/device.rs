//! Where a model runs and in which precision: `--device cpu|cuda:N`, `--dtype f32|f16|bf16`.

use std::fmt;
use std::str::FromStr;

/// `--device` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceChoice {
    Cpu,
    Cuda(usize),
}

impl FromStr for DeviceChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Self::Cuda)
                .ok_or_else(|| format!("unknown device {s:?}; use cpu or cuda:N")),
        }
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl DeviceChoice {
    /// Open the candle device. Without the `cuda` feature a CUDA choice is a clear error.
    pub fn open(self) -> Result<candle_core::Device, String> {
        match self {
            Self::Cpu => Ok(candle_core::Device::Cpu),
            Self::Cuda(n) => {
                candle_core::Device::new_cuda(n).map_err(|e| format!("cannot open cuda:{n}: {e}"))
            }
        }
    }

    /// Precision used when none is asked for: f32 on CPU (no fast half kernels there),
    /// f16 on GPU (the SDXL VAE is decoded in f32 regardless, as it overflows in f16).
    pub fn default_dtype(self) -> DTypeChoice {
        match self {
            Self::Cpu => DTypeChoice::F32,
            Self::Cuda(_) => DTypeChoice::F16,
        }
    }
}

/// `--dtype` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DTypeChoice {
    F32,
    F16,
    Bf16,
}

impl DTypeChoice {
    pub fn to_candle(self) -> candle_core::DType {
        match self {
            Self::F32 => candle_core::DType::F32,
            Self::F16 => candle_core::DType::F16,
            Self::Bf16 => candle_core::DType::BF16,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::Bf16 => "bf16",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names_parse_and_print_back() {
        for (text, choice) in [("cpu", DeviceChoice::Cpu), ("cuda:1", DeviceChoice::Cuda(1))] {
            assert_eq!(text.parse::<DeviceChoice>(), Ok(choice));
            assert_eq!(choice.to_string(), text);
        }
        assert_eq!("cuda".parse::<DeviceChoice>(), Ok(DeviceChoice::Cuda(0)));
        assert!("gpu".parse::<DeviceChoice>().is_err());
        assert!("cuda:x".parse::<DeviceChoice>().is_err());
    }
}
