//! Frozen MXFP4 experts held in the checkpoint's own blocks (gpt-oss as released; core's mxfp4.rs has the format):
//! the u8 blocks and scales stay on the device, and each expert's matrix is unpacked there when a pass needs it,
//! by table lookups any backend runs (a byte's two E2M1 values, a scale's power of two). Exact: the values are
//! those the dense reading gives, in about a quarter of bf16's memory.

use candle_core::{DType, Device, Result, Tensor};
use freezetune_core::mxfp4::Packed;

pub struct PackedExperts {
    /// (experts, rows, groups · 16) u8.
    blocks: Tensor,
    /// (experts, rows, groups) u8.
    scales: Tensor,
    packed: Packed,
    /// f32 (256, 2): a byte's low-nibble and high-nibble values.
    pairs: Tensor,
    /// f32 (256): 2^(byte − 127).
    powers: Tensor,
}

impl PackedExperts {
    /// The pair's bytes (as stored) on `device`.
    pub fn new(packed: Packed, blocks: &[u8], scales: &[u8], device: &Device) -> Result<PackedExperts> {
        let (e, r, g) = (packed.experts as usize, packed.rows as usize, packed.groups as usize);
        let fp4 = freezetune_core::mxfp4::FP4;
        let pairs: Vec<f32> = (0..256).flat_map(|b| [fp4[b & 0x0f], fp4[b >> 4]]).collect();
        let powers: Vec<f32> = (0..256).map(|s| 2f64.powi(s - 127) as f32).collect();
        Ok(PackedExperts {
            blocks: Tensor::from_slice(blocks, (e, r, g * 16), device)?,
            scales: Tensor::from_slice(scales, (e, r, g), device)?,
            packed,
            pairs: Tensor::from_vec(pairs, (256, 2), device)?,
            powers: Tensor::from_vec(powers, 256, device)?,
        })
    }

    /// Expert `e`'s dense matrix (groups · 32, rows) in `dtype`: the slice `e` of the dense tensor.
    pub fn matrix(&self, e: usize, dtype: DType) -> Result<Tensor> {
        let (r, g) = (self.packed.rows as usize, self.packed.groups as usize);
        // Indices as u32: candle's index_select reads an index of its type's maximum (255 for u8) as padding, a zero.
        let ids = |t: &Tensor| t.get(e)?.flatten_all()?.to_dtype(DType::U32);
        let codes = self.pairs.index_select(&ids(&self.blocks)?, 0)?;
        let scales = self.powers.index_select(&ids(&self.scales)?, 0)?;
        let values = codes.reshape((r, g, 32))?.broadcast_mul(&scales.reshape((r, g, 1))?)?;
        values.reshape((r, g * 32))?.t()?.to_dtype(dtype)
    }

    /// The dense tensor's shape (experts, groups · 32, rows).
    pub fn dense_shape(&self) -> Vec<usize> {
        self.packed.dense_shape().iter().map(|&d| d as usize).collect()
    }

    /// Bytes held on the device (the tables aside).
    pub fn storage_bytes(&self) -> usize {
        self.blocks.elem_count() + self.scales.elem_count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each expert's matrix unpacked on the device is the slice of core's dense unpacking.
    #[test]
    fn matrices_are_slices_of_the_dense_unpacking() {
        let packed = Packed {
            experts: 3,
            rows: 5,
            groups: 2,
        };
        // Every byte value, 255 (a u8 index's padding value to candle) included.
        let blocks: Vec<u8> = (0..3 * 5 * 2 * 16).map(|i| (i * 37 % 256) as u8).collect();
        assert!(blocks.contains(&255));
        let scales: Vec<u8> = (0..3 * 5 * 2).map(|i| (120 + i % 9) as u8).collect();
        let dense = packed.unpack("x", &blocks, &scales).unwrap();
        let held = PackedExperts::new(packed, &blocks, &scales, &Device::Cpu).unwrap();
        for e in 0..3 {
            let m = held.matrix(e, DType::F32).unwrap();
            assert_eq!(m.dims(), [64, 5]);
            let got = m.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(got, dense[e * 64 * 5..(e + 1) * 64 * 5], "expert {e}");
        }
    }
}
