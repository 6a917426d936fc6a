//! Where tensors live: the one place that chooses between CPU and GPU.

use candle_core::Device;

use crate::error::WorkerError;

/// Which device the user asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DevicePreference {
    /// A GPU when this build has CUDA and one is present, else the CPU.
    Auto,
    Cpu,
    /// A GPU or an error.
    Gpu,
}

/// Chooses the device once at start. Without the `cuda` feature every choice but `gpu`
/// yields the CPU, and `gpu` is an error naming the feature.
pub fn select(preference: DevicePreference) -> Result<Device, WorkerError> {
    if preference == DevicePreference::Cpu {
        return Ok(Device::Cpu);
    }
    #[cfg(feature = "cuda")]
    if candle_core::utils::cuda_is_available() {
        return Device::new_cuda(0).map_err(|e| WorkerError::Device(e.to_string()));
    }
    match preference {
        DevicePreference::Gpu => Err(WorkerError::Device(
            "--device gpu needs a GPU and a build with `--features cuda`".into(),
        )),
        _ => Ok(Device::Cpu),
    }
}

/// A short name for `/v1/models` and metrics: `cpu` or `cuda:N`.
pub fn name(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

/// Which kernels run quantized (GGUF) models on `device`: this crate's own runtime-dispatched
/// CPU kernels (`aigc-quant`) on the CPU, candle's elsewhere (CUDA).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuantizedKernels {
    /// `aigc_quant` (AVX2 / AVX-512 VNNI / scalar, chosen at run time).
    Cpu,
    /// candle-transformers' quantized models on the device.
    Candle,
}

pub fn quantized_kernels(device: &Device) -> QuantizedKernels {
    if device.is_cpu() {
        QuantizedKernels::Cpu
    } else {
        QuantizedKernels::Candle
    }
}
