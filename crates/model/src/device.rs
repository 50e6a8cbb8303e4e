//! The one place that decides where the model runs and in which float type it computes.

use candle_core::{DType, Device};

/// What the user asked for (`--device`); `Auto` takes a GPU when the build has one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceRequest {
    #[default]
    Auto,
    Cpu,
    Cuda(usize),
}

/// Picks the device. CUDA support arrives with its own issue: until this build has the `cuda`
/// feature of candle, every request resolves to the CPU.
pub fn select_device(request: DeviceRequest) -> candle_core::Result<Device> {
    match request {
        DeviceRequest::Cpu | DeviceRequest::Auto => Ok(Device::Cpu),
        DeviceRequest::Cuda(ordinal) => Device::new_cuda(ordinal),
    }
}

/// What kind of processor the math runs on, as far as the dtype choice cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accelerator {
    Cpu,
    Cuda { compute_capability: (u32, u32) },
}

/// The activation dtype: f32 on CPU (exact, and fast enough with quantized weights); on CUDA
/// bf16 from compute capability 8.0 (Ampere) on, f16 below it (a T4 is 7.5 and has no bf16).
pub fn compute_dtype(accelerator: Accelerator) -> DType {
    match accelerator {
        Accelerator::Cpu => DType::F32,
        Accelerator::Cuda {
            compute_capability: (major, _),
        } if major >= 8 => DType::BF16,
        Accelerator::Cuda { .. } => DType::F16,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dtype_policy() {
        assert_eq!(compute_dtype(Accelerator::Cpu), DType::F32);
        let t4 = Accelerator::Cuda {
            compute_capability: (7, 5),
        };
        assert_eq!(compute_dtype(t4), DType::F16);
        let h100 = Accelerator::Cuda {
            compute_capability: (9, 0),
        };
        assert_eq!(compute_dtype(h100), DType::BF16);
    }

    #[test]
    fn auto_is_cpu_without_cuda() {
        assert!(select_device(DeviceRequest::Auto).unwrap().is_cpu());
    }
}
