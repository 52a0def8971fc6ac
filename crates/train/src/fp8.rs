//! Frozen FP8 matrices held in the checkpoint's own codes and scales (DeepSeek-V3, Kimi K2, Qwen3's FP8 builds;
//! core's fp8.rs has the format): a byte a value and one scale a block stay where the model runs, and the dense
//! matrix is rebuilt for each matmul that reads it. On a GPU (and on the CPU with `FREEZETUNE_FUSED=0`) by a table
//! lookup any backend runs (a code's e4m3 value) times the block's scale; on the CPU by one parallel pass over the
//! host's bytes (the lookup's u32 indices, gather, multiply and copy each allocate a matrix). Exact either way: the
//! values are those the dense reading gives (core's `Fp8Matrix::dequantize`), in about half of bf16's memory.

use candle_core::{DType, Device, Result, Tensor};
use freezetune_core::fp8::{e4m3_value, round_to_bf16, Fp8Matrix};
use freezetune_core::safetensors::DType as StDType;
use rayon::prelude::*;

pub struct Fp8Weight {
    held: Held,
    matrix: Fp8Matrix,
}

/// The codes, and each block's scale spread along its columns ((grid rows, cols): a 1/block-rows share of the
/// codes' count, so each row reads its block's scales contiguously).
enum Held {
    Host {
        codes: Vec<u8>,
        scales: Vec<f32>,
    },
    /// `codes` (rows · cols) u8, `scales` (grid rows, 1, cols) f32, `table` (256) f32: each code's value.
    Device {
        codes: Tensor,
        scales: Tensor,
        table: Tensor,
    },
}

impl Fp8Weight {
    /// The pair's codes and its (checked, f32) scales on `device`: host memory where the fused CPU kernels run.
    pub fn new(matrix: Fp8Matrix, codes: &[u8], scales: &[f32], device: &Device) -> Result<Fp8Weight> {
        let host = device.is_cpu() && crate::fused::enabled();
        Fp8Weight::held(matrix, codes, scales, device, host)
    }

    fn held(matrix: Fp8Matrix, codes: &[u8], scales: &[f32], device: &Device, host: bool) -> Result<Fp8Weight> {
        let cols = matrix.cols as usize;
        let (grid_rows, grid_cols) = (matrix.grid().0 as usize, matrix.grid().1 as usize);
        let bc = matrix.block.1 as usize;
        let per_column: Vec<f32> = (0..grid_rows)
            .flat_map(|g| (0..cols).map(move |c| scales[g * grid_cols + c / bc]))
            .collect();
        let held = match host {
            true => Held::Host {
                codes: codes.to_vec(),
                scales: per_column,
            },
            false => Held::Device {
                codes: Tensor::from_slice(codes, codes.len(), device)?,
                scales: Tensor::from_vec(per_column, (grid_rows, 1, cols), device)?,
                table: Tensor::from_vec((0..=255u8).map(e4m3_value).collect(), 256, device)?,
            },
        };
        Ok(Fp8Weight { held, matrix })
    }

    /// The dense (rows, cols) matrix in `dtype`: each code's value times its scale in f32, rounded to bf16 first
    /// where the checkpoint's scales are bf16 (transformers multiplies in the scales' dtype).
    pub fn matrix(&self, dtype: DType) -> Result<Tensor> {
        let scaled = match &self.held {
            Held::Host { codes, scales } => self.host_matrix(codes, scales)?,
            Held::Device { codes, scales, table } => {
                let scaled = self.device_matrix(codes, scales, table)?;
                match self.matrix.scale_dtype {
                    StDType::BF16 => scaled.to_dtype(DType::BF16)?,
                    _ => scaled,
                }
            }
        };
        scaled.to_dtype(dtype)
    }

    fn host_matrix(&self, codes: &[u8], scales: &[f32]) -> Result<Tensor> {
        let (rows, cols) = self.dims();
        let br = self.matrix.block.0 as usize;
        let bf16 = self.matrix.scale_dtype == StDType::BF16;
        let mut table = [0f32; 256];
        table.iter_mut().enumerate().for_each(|(c, v)| *v = e4m3_value(c as u8));
        let mut out = vec![0f32; rows * cols];
        out.par_chunks_mut(cols).enumerate().for_each(|(r, row)| {
            let (codes, scales) = (&codes[r * cols..][..cols], &scales[r / br * cols..][..cols]);
            for ((v, &c), &s) in row.iter_mut().zip(codes).zip(scales) {
                let x = table[c as usize] * s;
                *v = if bf16 { round_to_bf16(x) } else { x };
            }
        });
        Tensor::from_vec(out, (rows, cols), &Device::Cpu)
    }

    fn device_matrix(&self, codes: &Tensor, scales: &Tensor, table: &Tensor) -> Result<Tensor> {
        let (rows, cols) = self.dims();
        // Indices as u32: candle's index_select reads an index of its type's maximum (255 for u8) as padding.
        let values = table.index_select(&codes.to_dtype(DType::U32)?, 0)?;
        let values = values.reshape((rows, cols))?;
        // Whole blocks of rows broadcast their scales; a partial last block (DeepSeek-V3's 576-row projection in
        // blocks of 128) is scaled on its own and appended.
        let br = self.matrix.block.0 as usize;
        let whole = rows / br;
        let mut parts = Vec::with_capacity(2);
        if whole > 0 {
            let block_rows = values.narrow(0, 0, whole * br)?.reshape((whole, br, cols))?;
            let scaled = block_rows.broadcast_mul(&scales.narrow(0, 0, whole)?)?;
            parts.push(scaled.reshape((whole * br, cols))?);
        }
        if rows % br != 0 {
            let last = values.narrow(0, whole * br, rows % br)?;
            parts.push(last.broadcast_mul(&scales.narrow(0, whole, 1)?.squeeze(0)?)?);
        }
        match parts.len() {
            1 => Ok(parts.pop().expect("one part")),
            _ => Tensor::cat(&parts, 0),
        }
    }

    pub fn dims(&self) -> (usize, usize) {
        (self.matrix.rows as usize, self.matrix.cols as usize)
    }

    /// Bytes held (the table aside).
    pub fn storage_bytes(&self) -> usize {
        match &self.held {
            Held::Host { codes, scales } => codes.len() + scales.len() * 4,
            Held::Device { codes, scales, .. } => codes.elem_count() + scales.elem_count() * 4,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use freezetune_core::fp8::Scheme;
    use freezetune_core::safetensors::DType as StDType;

    /// Every code, partial blocks down and across, both scale dtypes, both ways of holding them: the matrix is
    /// core's dense reading.
    #[test]
    fn the_held_matrix_is_cores_dequantization() {
        let scheme = Scheme { block: Some((4, 8)) };
        for scale_dtype in [StDType::F32, StDType::BF16] {
            let (rows, cols) = (10, 27);
            let m = Fp8Matrix::of("w", (StDType::F8E4M3, &[10, 27]), (scale_dtype, &[3, 4]), &scheme).unwrap();
            let codes: Vec<u8> = (0..rows * cols)
                .map(|i| (i * 37 % 256) as u8)
                .map(|c| if freezetune_core::fp8::is_nan_code(c) { 0x7e } else { c })
                .collect();
            let scales: Vec<f32> = (0..12).map(|i| 0.013 * (i as f32 + 1.0)).collect();
            let bytes: Vec<u8> = match scale_dtype {
                StDType::BF16 => scales
                    .iter()
                    .flat_map(|s| ((s.to_bits() >> 16) as u16).to_le_bytes())
                    .collect(),
                _ => scales.iter().flat_map(|s| s.to_le_bytes()).collect(),
            };
            let s = m.check("w", &codes, &bytes).unwrap();
            let want = m.dequantize(&codes, &s);
            for host in [true, false] {
                let held = Fp8Weight::held(m, &codes, &s, &Device::Cpu, host).unwrap();
                let got = held.matrix(DType::F32).unwrap();
                assert_eq!(got.dims(), [rows, cols]);
                let got = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                assert_eq!(got, want, "{scale_dtype}, host {host}");
                assert_eq!(held.storage_bytes() as u64, m.held_bytes());
            }
        }
    }
}
