//! A model folder's weight files as export reads them: memory-mapped, with each FP8 weight (`X.weight` in
//! F8_E4M3 beside `X.weight_scale_inv`: DeepSeek-V3, Qwen3's FP8 builds, or a `final/` trained from one, whose
//! frozen weights stay FP8) read as its dense values, exactly as transformers dequantizes it (core's fp8.rs). Its
//! scales are not a tensor of their own here.

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{Device, Tensor};
use freezetune_core::fp8::{self, Fp8Matrix, Scheme};
use freezetune_core::safetensors::DType as StDType;
use std::collections::BTreeMap;
use std::path::PathBuf;

pub struct Weights {
    st: MmapedSafetensors,
    /// FP8 weights by name.
    fp8: BTreeMap<String, Fp8Matrix>,
}

impl Weights {
    /// Maps `files`; `scheme` is config.json's FP8 scheme. Half an FP8 pair, or one that does not fit its
    /// scheme, is refused by name.
    pub fn open(files: &[PathBuf], scheme: Option<&Scheme>) -> std::result::Result<Weights, String> {
        // SAFETY: the files are only read, and FreezeTune does not write a model folder while exporting it.
        let st = unsafe { MmapedSafetensors::multi(files) }.map_err(|e| format!("reading the weights: {e}"))?;
        // Tensors of a dtype core does not name cannot be half of a pair; they are left to the export's checks.
        let headers: BTreeMap<String, (StDType, Vec<u64>)> = st
            .tensors()
            .into_iter()
            .filter_map(|(n, v)| {
                let dtype = StDType::from_name(&v.dtype().to_string())?;
                Some((n, (dtype, v.shape().iter().map(|&d| d as u64).collect())))
            })
            .collect();
        let named = headers.iter().map(|(n, (d, _))| (n.as_str(), *d));
        let names = fp8::pairs(named, scheme).map_err(|(name, why)| format!("tensor {name} {why}"))?;
        let mut out = BTreeMap::new();
        for name in names {
            let scheme = scheme.expect("pairs refuses FP8 without a scheme");
            let (w, s) = (&headers[&name], &headers[&format!("{name}{}", fp8::SCALE_SUFFIX)]);
            out.insert(name.clone(), Fp8Matrix::of(&name, (w.0, &w.1), (s.0, &s.1), scheme)?);
        }
        Ok(Weights { st, fp8: out })
    }

    /// Every tensor's name and shape, an FP8 weight's scales left out.
    pub fn tensors(&self) -> Vec<(String, Vec<usize>)> {
        let scales = |n: &str| {
            n.strip_suffix(fp8::SCALE_SUFFIX)
                .is_some_and(|w| self.fp8.contains_key(w))
        };
        self.st
            .tensors()
            .into_iter()
            .filter(|(n, _)| !scales(n))
            .map(|(n, v)| (n, v.shape().to_vec()))
            .collect()
    }

    /// Tensor `name` on the CPU in its stored dtype; an FP8 weight as its dense values in f32.
    pub fn load(&self, name: &str) -> candle_core::Result<Tensor> {
        let Some(m) = self.fp8.get(name) else {
            return self.st.load(name, &Device::Cpu);
        };
        let codes = self.st.get(name)?.data();
        let scales = self.st.get(&format!("{name}{}", fp8::SCALE_SUFFIX))?.data();
        let scales = m.check(name, codes, scales).map_err(candle_core::Error::msg)?;
        Tensor::from_vec(
            m.dequantize(codes, &scales),
            (m.rows as usize, m.cols as usize),
            &Device::Cpu,
        )
    }

    /// The mapped files, for a tensor read in parts (never an FP8 weight).
    pub fn mapped(&self) -> &MmapedSafetensors {
        &self.st
    }
}
