//! Frozen FP8 matrices held in the checkpoint's own codes and scales (DeepSeek-V3, Kimi K2, Qwen3's FP8 builds;
//! core's fp8.rs has the format): a byte a value and one scale a block stay on the device, and the dense matrix is
//! rebuilt there for each matmul that reads it, by a table lookup any backend runs (a code's e4m3 value) times the
//! block's scale. Exact: the values are those the dense reading gives (core's `Fp8Matrix::dequantize`), in about
//! half of bf16's memory.

use candle_core::{DType, Device, Result, Tensor};
use freezetune_core::fp8::Fp8Matrix;

pub struct Fp8Weight {
    /// (rows · cols) u8 codes.
    codes: Tensor,
    /// (grid rows, 1, cols) f32: each block's scale, spread along its columns (a 1/block-rows share of the codes'
    /// count), so a matmul's multiply broadcasts it down the block's rows.
    scales: Tensor,
    matrix: Fp8Matrix,
    /// f32 (256): each code's value.
    table: Tensor,
}

impl Fp8Weight {
    /// The pair's codes and its (checked, f32) scales on `device`.
    pub fn new(matrix: Fp8Matrix, codes: &[u8], scales: &[f32], device: &Device) -> Result<Fp8Weight> {
        let (rows, cols) = (matrix.rows as usize, matrix.cols as usize);
        let (grid_rows, grid_cols) = matrix.grid();
        let bc = matrix.block.1 as usize;
        let table: Vec<f32> = (0..=255u8).map(freezetune_core::fp8::e4m3_value).collect();
        // Scales spread along the columns on the host, then held as (grid rows, 1, cols).
        let per_column: Vec<f32> = (0..grid_rows as usize)
            .flat_map(|g| (0..cols).map(move |c| scales[g * grid_cols as usize + c / bc]))
            .collect();
        let scales = Tensor::from_vec(per_column, (grid_rows as usize, 1, cols), device)?;
        Ok(Fp8Weight {
            codes: Tensor::from_slice(codes, rows * cols, device)?,
            scales,
            matrix,
            table: Tensor::from_vec(table, 256, device)?,
        })
    }

    /// The dense (rows, cols) matrix in `dtype`: each code's value times its scale in f32, rounded to bf16 first
    /// where the checkpoint's scales are bf16 (transformers multiplies in the scales' dtype).
    pub fn matrix(&self, dtype: DType) -> Result<Tensor> {
        let (rows, cols) = (self.matrix.rows as usize, self.matrix.cols as usize);
        // Indices as u32: candle's index_select reads an index of its type's maximum (255 for u8) as padding.
        let values = self.table.index_select(&self.codes.to_dtype(DType::U32)?, 0)?;
        let values = values.reshape((rows, cols))?;
        // Whole blocks of rows broadcast their scales; a partial last block (DeepSeek-V3's 576-row projection in
        // blocks of 128) is scaled on its own and appended.
        let br = self.matrix.block.0 as usize;
        let whole = rows / br;
        let scale_of = |from: usize, blocks: usize| self.scales.narrow(0, from, blocks);
        let mut parts = Vec::with_capacity(2);
        if whole > 0 {
            let block_rows = values.narrow(0, 0, whole * br)?.reshape((whole, br, cols))?;
            parts.push(
                block_rows
                    .broadcast_mul(&scale_of(0, whole)?)?
                    .reshape((whole * br, cols))?,
            );
        }
        if rows % br != 0 {
            let last = values.narrow(0, whole * br, rows % br)?;
            parts.push(last.broadcast_mul(&scale_of(whole, 1)?.squeeze(0)?)?);
        }
        let scaled = match parts.len() {
            1 => parts.pop().expect("one part"),
            _ => Tensor::cat(&parts, 0)?,
        };
        match self.matrix.scale_dtype {
            freezetune_core::safetensors::DType::BF16 => scaled.to_dtype(DType::BF16)?.to_dtype(dtype),
            _ => scaled.to_dtype(dtype),
        }
    }

    pub fn dims(&self) -> (usize, usize) {
        (self.matrix.rows as usize, self.matrix.cols as usize)
    }

    /// Bytes held on the device (the table aside).
    pub fn storage_bytes(&self) -> usize {
        self.codes.elem_count() + self.scales.elem_count() * 4
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use freezetune_core::fp8::Scheme;
    use freezetune_core::safetensors::DType as StDType;

    /// Every code, partial blocks down and across, both scale dtypes: the device's matrix is core's dense reading.
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
            let held = Fp8Weight::new(m, &codes, &s, &Device::Cpu).unwrap();
            let got = held.matrix(DType::F32).unwrap();
            assert_eq!(got.dims(), [rows, cols]);
            assert_eq!(
                got.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                want,
                "{scale_dtype}"
            );
        }
    }
}
