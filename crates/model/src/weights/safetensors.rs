//! Hugging Face safetensors directories (one file or shards), memory-mapped.

use super::{Param, WeightSource};
use crate::architecture::Architecture;
use crate::error::{ModelError, Result};
use candle_core::quantized::QMatMul;
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};
use std::path::Path;

pub struct SafetensorsWeights {
    files: MmapedSafetensors,
    architecture: Architecture,
    device: Device,
    dtype: DType,
}

impl SafetensorsWeights {
    /// Maps every `*.safetensors` file of `dir`, whose tensors `architecture` names; weights
    /// are converted to `dtype` on load.
    pub fn open(
        dir: &Path,
        architecture: Architecture,
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        let mut paths: Vec<_> = std::fs::read_dir(dir)
            .map_err(|e| ModelError::io(dir, e))?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|ext| ext == "safetensors"))
            .collect();
        if paths.is_empty() {
            return Err(ModelError::Unsupported(format!(
                "no .safetensors files in {}",
                dir.display()
            )));
        }
        paths.sort();
        // SAFETY: the files are mapped read-only; like every mmap-based loader we rely on
        // nobody truncating them while the server runs.
        let files = unsafe { MmapedSafetensors::multi(&paths)? };
        Ok(Self {
            files,
            architecture,
            device: device.clone(),
            dtype,
        })
    }

    fn load(&self, param: Param) -> Result<Tensor> {
        let name = self.architecture.hf_name(param);
        if !self.contains(param) {
            return Err(ModelError::MissingWeight(name));
        }
        Ok(self.files.load(&name, &self.device)?.to_dtype(self.dtype)?)
    }
}

impl WeightSource for SafetensorsWeights {
    fn matrix(&mut self, param: Param) -> Result<QMatMul> {
        Ok(QMatMul::Tensor(self.load(param)?))
    }

    fn vector(&mut self, param: Param) -> Result<Tensor> {
        Ok(self.load(param)?.to_dtype(DType::F32)?)
    }

    fn contains(&self, param: Param) -> bool {
        self.files.get(&self.architecture.hf_name(param)).is_ok()
    }
}
