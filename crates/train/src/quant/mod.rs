//! Frozen projection matrices in llama.cpp's block formats (`[model] quantize_frozen`; core's quant.rs says which
//! tensors and which format). Quantized once while the weights load; dequantized one matrix at a time, for the
//! length of one matmul, where the forward pass or an input gradient needs it (frozen_matmul.rs), so the model is
//! never held dense. The gradient that passes through a frozen layer is exact against the dequantized values: the
//! same weights the forward pass used.
//!
//! On the CPU both directions run over all cores in blocks (candle's own conversions run on one thread, which for
//! a 7B model's layers would cost more than the matmuls they feed). q4_k is encoded as llama.cpp encodes it today
//! (core's kquant.rs, also what GGUF export writes): candle's encoder uses llama.cpp's older search, with 1.3x the
//! logit error, and allocates per 32 values.

use candle_core::quantized::k_quants::{BlockQ4K, BlockQ8_0};
use candle_core::quantized::{GgmlDType, GgmlType, QStorage, QTensor};
use candle_core::{DType, Device, Result, Tensor};
use freezetune_core::kquant;
use freezetune_core::quant::QuantFormat;
use rayon::prelude::*;
use std::borrow::Cow;

/// Blocks converted per task: large enough to amortise rayon, small enough to spread one matrix over every core.
const BLOCKS_PER_TASK: usize = 64;

fn ggml_dtype(format: QuantFormat) -> GgmlDType {
    match format {
        QuantFormat::Q8_0 => GgmlDType::Q8_0,
        QuantFormat::Q4K => GgmlDType::Q4K,
    }
}

/// `t` (a CPU tensor of any float dtype, rows a multiple of the format's block) quantized onto `device`.
pub fn quantize(t: &Tensor, format: QuantFormat, device: &Device) -> Result<QTensor> {
    let shape = t.shape().clone();
    let values = f32_values(t)?;
    if values.len() % format.block_values() != 0 {
        candle_core::bail!("{shape:?} is not a whole number of {} blocks", format.name())
    }
    let storage = match format {
        QuantFormat::Q8_0 => storage_of(&quantize_blocks::<BlockQ8_0>(&values), device, format)?,
        QuantFormat::Q4K => storage_of(&encode_q4k(&values), device, format)?,
    };
    QTensor::new(storage, shape)
}

/// `t`'s values in f32, widened over every core (candle's cast runs on one).
fn f32_values(t: &Tensor) -> Result<Vec<f32>> {
    let flat = t.flatten_all()?;
    Ok(match t.dtype() {
        DType::BF16 => flat.to_vec1::<half::bf16>()?.par_iter().map(|v| v.to_f32()).collect(),
        DType::F16 => flat.to_vec1::<half::f16>()?.par_iter().map(|v| v.to_f32()).collect(),
        _ => flat.to_dtype(DType::F32)?.to_vec1::<f32>()?,
    })
}

/// q4_k blocks of `values`, encoded as llama.cpp does over every core. Written into candle's block type so the
/// upload reads aligned blocks (candle's loader asserts the alignment of the bytes it is handed).
fn encode_q4k(values: &[f32]) -> Vec<BlockQ4K> {
    let mut blocks = vec![BlockQ4K::zeros(); values.len() / kquant::BLOCK_VALUES];
    // SAFETY: `BlockQ4K` is llama.cpp's `repr(C)` block of 144 plain bytes; any bytes are a valid block.
    let bytes =
        unsafe { std::slice::from_raw_parts_mut(blocks.as_mut_ptr().cast::<u8>(), std::mem::size_of_val(&blocks[..])) };
    bytes
        .par_chunks_mut(BLOCKS_PER_TASK * kquant::BLOCK_BYTES)
        .zip(values.par_chunks(BLOCKS_PER_TASK * kquant::BLOCK_VALUES))
        .for_each(|(out, src)| out.copy_from_slice(&kquant::quantize_q4k(src)));
    blocks
}

fn quantize_blocks<T: GgmlType>(values: &[f32]) -> Vec<T> {
    let mut blocks = vec![T::zeros(); values.len() / T::BLCK_SIZE];
    blocks
        .par_chunks_mut(BLOCKS_PER_TASK)
        .zip(values.par_chunks(BLOCKS_PER_TASK * T::BLCK_SIZE))
        .for_each(|(out, src)| T::from_float(src, out));
    blocks
}

fn storage_of<T: GgmlType>(blocks: &[T], device: &Device, format: QuantFormat) -> Result<QStorage> {
    // SAFETY: llama.cpp's block structs are `repr(C)` plain data (scales and packed integers, no padding the
    // reader would interpret); their bytes are the GGUF encoding candle reads back.
    let bytes = unsafe { std::slice::from_raw_parts(blocks.as_ptr().cast::<u8>(), std::mem::size_of_val(blocks)) };
    QStorage::from_data(Cow::Borrowed(bytes), device, ggml_dtype(format))
}

/// `q`'s values as a dense tensor of `dtype` on `q`'s device.
pub fn dequantize(q: &QTensor, dtype: DType) -> Result<Tensor> {
    let dense = match q.device() {
        Device::Cpu => match q.dtype() {
            GgmlDType::Q8_0 => dequantize_cpu::<BlockQ8_0>(q)?,
            GgmlDType::Q4K => dequantize_cpu::<BlockQ4K>(q)?,
            _ => q.dequantize(&Device::Cpu)?,
        },
        device => q.dequantize(&device)?,
    };
    dense.to_dtype(dtype)
}

fn dequantize_cpu<T: GgmlType>(q: &QTensor) -> Result<Tensor> {
    let data = q.data()?;
    let n = data.len() / std::mem::size_of::<T>();
    if data.len() != n * std::mem::size_of::<T>() || (data.as_ptr() as usize) % std::mem::align_of::<T>() != 0 {
        return q.dequantize(&Device::Cpu);
    }
    // SAFETY: length and alignment checked above; the bytes are blocks of `T` (candle stores them as a Vec<T>).
    let blocks = unsafe { std::slice::from_raw_parts(data.as_ptr().cast::<T>(), n) };
    let mut values = vec![0f32; n * T::BLCK_SIZE];
    values
        .par_chunks_mut(BLOCKS_PER_TASK * T::BLCK_SIZE)
        .zip(blocks.par_chunks(BLOCKS_PER_TASK))
        .for_each(|(out, src)| T::to_float(src, out));
    Tensor::from_vec(values, q.shape().clone(), &Device::Cpu)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(rows: usize, cols: usize) -> Tensor {
        let v: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * 0.05)
            .collect();
        Tensor::from_vec(v, (rows, cols), &Device::Cpu).unwrap()
    }

    fn rms(a: &Tensor, b: &Tensor) -> f32 {
        let d = (a - b).unwrap().sqr().unwrap().mean_all().unwrap();
        d.sqrt().unwrap().to_scalar::<f32>().unwrap()
    }

    #[test]
    fn conversions_agree_with_the_reference_encoders_and_stay_close_to_the_input() {
        let t = sample(40, 512);
        for (format, tol) in [(QuantFormat::Q8_0, 0.0005f32), (QuantFormat::Q4K, 0.004)] {
            let ours = quantize(&t, format, &Device::Cpu).unwrap();
            let candles = QTensor::quantize(&t, ggml_dtype(format)).unwrap();
            let back = dequantize(&ours, DType::F32).unwrap();
            // Our dequantization of candle's blocks is candle's.
            let reference = candles.dequantize(&Device::Cpu).unwrap();
            assert_eq!(
                rms(&dequantize(&candles, DType::F32).unwrap(), &reference),
                0.0,
                "{format:?}"
            );
            let bytes = ours.data().unwrap();
            match format {
                QuantFormat::Q8_0 => assert!(bytes == candles.data().unwrap(), "q8_0: candle's blocks"),
                // Chunked over threads, the same bytes as llama.cpp's encoder over the whole tensor, and closer to
                // the input than candle's older search.
                QuantFormat::Q4K => {
                    let values = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                    assert!(*bytes == kquant::quantize_q4k(&values)[..], "q4_k: llama.cpp's blocks");
                    let (e_ours, e_candle) = (rms(&back, &t), rms(&reference, &t));
                    assert!(e_ours < e_candle, "q4_k: rms error {e_ours}, candle's {e_candle}");
                }
            }
            let err = (&back - &t)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(err > 0.0 && err < tol, "{format:?}: max error {err}");
            assert_eq!(ours.storage_size_in_bytes() as u64, format.bytes_for(40 * 512));
        }
    }

    #[test]
    fn a_row_that_is_not_whole_blocks_is_refused() {
        assert!(quantize(&sample(3, 100), QuantFormat::Q8_0, &Device::Cpu).is_err());
    }
}
