//! The one place that decides where the model runs and in which float type it computes.

use crate::error::{ModelError, Result};
use candle_core::{DType, Device};

/// What the user asked for (`--device`); `Auto` takes a GPU when the build and the machine
/// have one, and the CPU otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceRequest {
    #[default]
    Auto,
    Cpu,
    Cuda(usize),
}

impl std::str::FromStr for DeviceRequest {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Self::Cuda)
                .ok_or_else(|| format!("unknown device `{s}` (auto, cpu, cuda, cuda:N)")),
        }
    }
}

/// Picks the device. `Auto` falls back to the CPU when this build has no CUDA or the machine
/// no usable GPU (with a warning in the second case); `Cuda` fails with the reason instead.
pub fn select_device(request: DeviceRequest) -> Result<Device> {
    match request {
        DeviceRequest::Cpu => Ok(Device::Cpu),
        DeviceRequest::Auto if !cfg!(feature = "cuda") => Ok(Device::Cpu),
        DeviceRequest::Auto => match Device::new_cuda(0) {
            Ok(device) => Ok(device),
            Err(e) => {
                tracing::warn!("no usable GPU ({e}); running on the CPU");
                Ok(Device::Cpu)
            }
        },
        DeviceRequest::Cuda(_) if !cfg!(feature = "cuda") => Err(ModelError::Device(
            "this build has no CUDA support: build with `--features cuda` (see README)".into(),
        )),
        DeviceRequest::Cuda(ordinal) => Device::new_cuda(ordinal).map_err(|e| {
            ModelError::Device(format!(
                "CUDA device {ordinal} is not usable: {e}. Check `nvidia-smi`, the driver, \
                 and that the device is visible (CUDA_VISIBLE_DEVICES)"
            ))
        }),
    }
}

/// What kind of processor the math runs on, as far as the dtype choice cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accelerator {
    Cpu,
    Cuda {
        /// The device's compute capability.
        compute_capability: (u32, u32),
        /// The compute capability the binary's kernels were built for (`CUDA_COMPUTE_CAP`):
        /// candle's bf16 kernels exist only in builds for 8.0 and up.
        build_compute_cap: u32,
    },
}

/// The activation dtype: f32 on CPU (exact, and fast enough with quantized weights); on CUDA
/// bf16 when both the device and the build are 8.0 (Ampere) or newer, f16 otherwise (a T4 is
/// 7.5 and has no bf16, and a build for 7.5 has no bf16 kernels even on a newer card).
pub fn compute_dtype(accelerator: Accelerator) -> DType {
    match accelerator {
        Accelerator::Cpu => DType::F32,
        Accelerator::Cuda {
            compute_capability: (major, _),
            build_compute_cap,
        } if major >= 8 && build_compute_cap >= 80 => DType::BF16,
        Accelerator::Cuda { .. } => DType::F16,
    }
}

/// The accelerator behind `device`.
pub fn accelerator(device: &Device) -> Result<Accelerator> {
    match device {
        #[cfg(feature = "cuda")]
        Device::Cuda(cuda) => Ok(Accelerator::Cuda {
            compute_capability: ferrollama_kernels::gpu_info(cuda)?.compute_capability,
            build_compute_cap: ferrollama_kernels::BUILD_COMPUTE_CAP,
        }),
        Device::Cpu => Ok(Accelerator::Cpu),
        #[allow(unreachable_patterns)]
        _ => Err(ModelError::Unsupported(format!(
            "device {device:?} is not supported"
        ))),
    }
}

/// The dtype the model computes in on `device` unless told otherwise.
pub fn default_dtype(device: &Device) -> Result<DType> {
    Ok(compute_dtype(accelerator(device)?))
}

/// `(free, total)` bytes of the GPU behind `device`.
pub fn gpu_memory(device: &Device) -> Result<(usize, usize)> {
    match device {
        #[cfg(feature = "cuda")]
        Device::Cuda(cuda) => {
            let info = ferrollama_kernels::gpu_info(cuda)?;
            Ok((info.free_memory, info.total_memory))
        }
        _ => Err(ModelError::Unsupported(format!("{device:?} is not a GPU"))),
    }
}

/// One line for the log: the device, as a person would name it; on the CPU, with the threads
/// the engine computes on (`threads`; 0: one per core, rayon's default).
pub fn describe(device: &Device, threads: usize) -> String {
    match device {
        #[cfg(feature = "cuda")]
        Device::Cuda(cuda) => match ferrollama_kernels::gpu_info(cuda) {
            Ok(info) => format!(
                "{} (compute capability {}.{}, {:.1} GiB; kernels built for sm_{})",
                info.name,
                info.compute_capability.0,
                info.compute_capability.1,
                info.total_memory as f64 / (1u64 << 30) as f64,
                ferrollama_kernels::BUILD_COMPUTE_CAP
            ),
            Err(e) => format!("CUDA device ({e})"),
        },
        Device::Cpu => {
            let threads = match threads {
                0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
                n => n,
            };
            format!("CPU ({threads} threads)")
        }
        #[allow(unreachable_patterns)]
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cuda(major: u32, minor: u32, build_compute_cap: u32) -> Accelerator {
        Accelerator::Cuda {
            compute_capability: (major, minor),
            build_compute_cap,
        }
    }

    #[test]
    fn dtype_follows_device_and_build() {
        assert_eq!(compute_dtype(Accelerator::Cpu), DType::F32);
        assert_eq!(compute_dtype(cuda(7, 5, 75)), DType::F16, "T4");
        assert_eq!(compute_dtype(cuda(9, 0, 90)), DType::BF16, "H100 build");
        assert_eq!(
            compute_dtype(cuda(9, 0, 75)),
            DType::F16,
            "an sm_75 build has no bf16 kernels, even on an H100"
        );
        assert_eq!(compute_dtype(cuda(7, 5, 90)), DType::F16);
    }

    #[test]
    fn the_cpu_is_described_with_the_engines_threads() {
        assert_eq!(describe(&Device::Cpu, 1), "CPU (1 threads)");
        let all = std::thread::available_parallelism().unwrap().get();
        assert_eq!(describe(&Device::Cpu, 0), format!("CPU ({all} threads)"));
    }

    #[test]
    fn device_flag_parses() {
        assert_eq!("cuda:1".parse(), Ok(DeviceRequest::Cuda(1)));
        assert_eq!("cuda".parse(), Ok(DeviceRequest::Cuda(0)));
        assert_eq!("cpu".parse(), Ok(DeviceRequest::Cpu));
        assert!("gpu".parse::<DeviceRequest>().is_err());
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn a_cpu_build_runs_on_the_cpu_and_refuses_cuda() {
        assert!(select_device(DeviceRequest::Auto).unwrap().is_cpu());
        let err = select_device(DeviceRequest::Cuda(0))
            .unwrap_err()
            .to_string();
        assert!(err.contains("--features cuda"), "{err}");
    }
}
