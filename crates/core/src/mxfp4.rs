//! MXFP4 expert tensors, as OpenAI releases gpt-oss (`quantization_config.quant_method` = "mxfp4"): a dense stacked
//! tensor `X` (experts × in × out, as transformers holds it) is stored as `X_blocks` (u8, experts × out × in/32 ×
//! 16: two 4-bit E2M1 values a byte, the even one in the low nibble) and `X_scales` (u8, experts × out × in/32: a
//! power-of-two exponent + 127 per block of 32 values). FreezeTune reads such a pair as the dense tensor `X` (bf16,
//! exactly the values transformers' `convert_moe_packed_tensors` unpacks): the layout, the plan and the trainer see
//! `X`, and a trained model is written with `X` dense.

use crate::safetensors::DType;

pub const BLOCKS_SUFFIX: &str = "_blocks";
pub const SCALES_SUFFIX: &str = "_scales";

/// E2M1 values by their 4-bit code.
pub const FP4: [f32; 16] = [
    0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0,
];

/// The sizes of one packed pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packed {
    pub experts: u64,
    /// Outputs per expert (the packed rows).
    pub rows: u64,
    /// Blocks of 32 inputs per row.
    pub groups: u64,
}

impl Packed {
    /// The pair `name_blocks` / `name_scales` checked against each other: u8 blocks (experts, rows, groups, 16) and
    /// u8 scales (experts, rows, groups).
    pub fn of(name: &str, blocks: (DType, &[u64]), scales: (DType, &[u64])) -> std::result::Result<Packed, String> {
        let bad = |what: String| format!("MXFP4 tensor {name}{BLOCKS_SUFFIX} / {name}{SCALES_SUFFIX}: {what}");
        if blocks.0 != DType::U8 || scales.0 != DType::U8 {
            return Err(bad(format!(
                "blocks are {} and scales {}; both must be U8",
                blocks.0, scales.0
            )));
        }
        let packed = match (blocks.1, scales.1) {
            ([e, r, g, 16], [se, sr, sg]) if (e, r, g) == (se, sr, sg) => Packed {
                experts: *e,
                rows: *r,
                groups: *g,
            },
            (b, s) => {
                return Err(bad(format!(
                    "blocks {b:?} and scales {s:?} do not pair: blocks must be (experts, rows, groups, 16) and \
                     scales (experts, rows, groups)"
                )))
            }
        };
        let values = packed
            .experts
            .checked_mul(packed.rows)
            .and_then(|n| n.checked_mul(packed.groups))
            .and_then(|n| n.checked_mul(32));
        match values {
            Some(n) if n <= 1 << 40 => Ok(packed),
            _ => Err(bad(format!("{packed:?} is past any model's size"))),
        }
    }

    /// The dense tensor's shape: (experts, groups · 32, rows).
    pub fn dense_shape(&self) -> Vec<u64> {
        vec![self.experts, self.groups * 32, self.rows]
    }

    pub fn numel(&self) -> u64 {
        self.experts * self.rows * self.groups * 32
    }

    /// The pair's bytes checked against the sizes, and its scales against the format: a scale byte of 255 is
    /// not a number in MXFP4 (OCP's microscaling spec), which no released checkpoint holds.
    pub fn check_bytes(&self, name: &str, blocks: &[u8], scales: &[u8]) -> std::result::Result<(), String> {
        let (e, r, g) = (self.experts as usize, self.rows as usize, self.groups as usize);
        if blocks.len() != e * r * g * 16 || scales.len() != e * r * g {
            return Err(format!(
                "MXFP4 tensor {name}: {} block bytes and {} scale bytes for {self:?}",
                blocks.len(),
                scales.len()
            ));
        }
        match scales.iter().position(|&s| s == 255) {
            Some(at) => Err(format!(
                "MXFP4 tensor {name}{SCALES_SUFFIX}: scale {at} is 255, which MXFP4 reserves for not-a-number; the \
                 checkpoint is damaged"
            )),
            None => Ok(()),
        }
    }

    /// Expert `e`'s dense values, (groups · 32, rows) row-major: each code's E2M1 value times 2^(scale − 127),
    /// the packed rows becoming columns (transformers' transpose). `blocks` and `scales` are the whole pair's,
    /// checked by [`Packed::check_bytes`].
    pub fn unpack_expert(&self, e: usize, blocks: &[u8], scales: &[u8]) -> Vec<f32> {
        let (r, g) = (self.rows as usize, self.groups as usize);
        let mut out = vec![0f32; g * 32 * r];
        for row in 0..r {
            for group in 0..g {
                let at = (e * r + row) * g + group;
                let scale = 2f64.powi(scales[at] as i32 - 127);
                for (k, &byte) in blocks[at * 16..at * 16 + 16].iter().enumerate() {
                    for (half, code) in [(0, byte & 0x0f), (1, byte >> 4)] {
                        let input = group * 32 + 2 * k + half;
                        out[input * r + row] = (FP4[code as usize] as f64 * scale) as f32;
                    }
                }
            }
        }
        out
    }

    /// Every expert's dense values, (experts, groups · 32, rows) row-major.
    pub fn unpack(&self, name: &str, blocks: &[u8], scales: &[u8]) -> std::result::Result<Vec<f32>, String> {
        self.check_bytes(name, blocks, scales)?;
        Ok((0..self.experts as usize)
            .flat_map(|e| self.unpack_expert(e, blocks, scales))
            .collect())
    }
}

/// The dense names of the packed pairs among `names` (each stacked-experts tensor `X`, `….layers.N.mlp.experts.*`,
/// with both `X_blocks` and `X_scales`), sorted. Other names ending so are left alone (the decoder refuses what it
/// does not read). Refused, as (a tensor's name, why): half a pair, and a pair beside a dense `X`.
pub fn pairs<'a>(names: impl Iterator<Item = &'a str> + Clone) -> std::result::Result<Vec<String>, (String, String)> {
    let has = |n: &str| names.clone().any(|m| m == n);

    let mut out = Vec::new();
    for name in names.clone() {
        if let Some(base) = experts_base(name, BLOCKS_SUFFIX) {
            if has(base) {
                let why = format!("is stored both dense and as MXFP4 ({name}): keep one");
                return Err((base.to_string(), why));
            }
            if !has(&format!("{base}{SCALES_SUFFIX}")) {
                let why =
                    format!("is MXFP4 blocks without their scales {base}{SCALES_SUFFIX}: the checkpoint is incomplete");
                return Err((name.to_string(), why));
            }
            out.push(base.to_string());
        } else if let Some(base) = experts_base(name, SCALES_SUFFIX) {
            if !has(&format!("{base}{BLOCKS_SUFFIX}")) {
                let why =
                    format!("is MXFP4 scales without their blocks {base}{BLOCKS_SUFFIX}: the checkpoint is incomplete");
                return Err((name.to_string(), why));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// `name` without `suffix`, where that is a layer's stacked experts.
fn experts_base<'a>(name: &'a str, suffix: &str) -> Option<&'a str> {
    name.strip_suffix(suffix)
        .filter(|base| crate::quant::is_stacked_experts(base))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpacks_codes_times_their_power_of_two_into_transposed_columns() {
        // One expert, two rows of one block: row 0 codes 1..=15 then 0 at scale 2^1, row 1 all -6 at 2^-2.
        let p = Packed::of("x", (DType::U8, &[1, 2, 1, 16]), (DType::U8, &[1, 2, 1])).unwrap();
        let mut blocks = vec![0u8; 32];
        for k in 0..16 {
            let (lo, hi) = ((2 * k + 1) % 16, (2 * k + 2) % 16);
            blocks[k] = (lo | (hi << 4)) as u8;
            blocks[16 + k] = 0xff;
        }
        let scales = [128u8, 125];
        let v = p.unpack("x", &blocks, &scales).unwrap();
        assert_eq!(p.dense_shape(), vec![1, 32, 2]);
        // Input j of row 0 is column 0 of dense row j.
        let row0: Vec<f32> = (0..32).map(|j| v[j * 2]).collect();
        let want: Vec<f32> = (0..32).map(|j| FP4[(j + 1) % 16] * 2.0).collect();
        assert_eq!(row0, want);
        assert!((0..32).all(|j| v[j * 2 + 1] == -1.5));
    }

    #[test]
    fn mismatched_or_lone_tensors_are_refused_by_name() {
        let e = Packed::of("m.x", (DType::U8, &[2, 4, 3, 16]), (DType::U8, &[2, 4, 2])).unwrap_err();
        assert!(e.contains("m.x_blocks") && e.contains("do not pair"), "{e}");
        let e = Packed::of("m.x", (DType::F32, &[2, 4, 3, 16]), (DType::U8, &[2, 4, 3])).unwrap_err();
        assert!(e.contains("U8"), "{e}");
        let e = Packed::of(
            "m.x",
            (DType::U8, &[1 << 20, 1 << 20, 1 << 20, 16]),
            (DType::U8, &[1 << 20, 1 << 20, 1 << 20]),
        )
        .unwrap_err();
        assert!(e.contains("size"), "{e}");
        let p = Packed::of("m.x", (DType::U8, &[1, 1, 1, 16]), (DType::U8, &[1, 1, 1])).unwrap();
        assert!(p.unpack("m.x", &[0; 15], &[0]).unwrap_err().contains("15 block bytes"));
        let e = p.unpack("m.x", &[0; 16], &[255]).unwrap_err();
        assert!(e.contains("m.x_scales") && e.contains("255"), "{e}");
        let x = "model.layers.0.mlp.experts.down_proj";
        let (blocks, scales) = (format!("{x}_blocks"), format!("{x}_scales"));
        let names = [blocks.as_str(), scales.as_str(), "a.y", "vision.patch_scales"];
        assert_eq!(pairs(names.iter().copied()).unwrap(), vec![x]);
        let (name, why) = pairs(names[..1].iter().copied()).unwrap_err();
        assert!(name == blocks && why.contains(&scales), "{name}: {why}");
        let (name, why) = pairs([x, &blocks, &scales].into_iter()).unwrap_err();
        assert!(name == x && why.contains("both dense and as MXFP4"), "{name}: {why}");
    }
}
