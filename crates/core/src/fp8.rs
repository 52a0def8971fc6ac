//! FP8 weights as DeepSeek-V3, Kimi K2 and Qwen3's FP8 builds release them (`quantization_config`: `quant_method`
//! "fp8", transformers' FineGrainedFP8): a projection's `X.weight` is stored as `F8_E4M3` codes (rows × cols)
//! beside `X.weight_scale_inv` (f32 or bf16), one scale per block of `weight_block_size` (transformers' default
//! 128 × 128 where the key is absent; one scale for the whole matrix where it is null). A value is its code's e4m3fn value times its block's scale, computed as
//! transformers' `Fp8Dequantize` does: in the scale's dtype (so rounded to bf16 once where the scales are bf16).
//! FreezeTune reads each pair as the dense tensor `X.weight` it stands for: the layout, the plan and the trainer
//! see that, and a frozen one is held in its own codes and scales (train's fp8.rs).
//!
//! transformers' dequantization wants every dimension a multiple of the block; DeepSeek-V3's own `weight_dequant`
//! (and its FP8 matmul) take the last row and column blocks partial (`kv_a_proj_with_mqa` is 576 rows, 4.5 blocks
//! of 128). FreezeTune reads partial blocks as DeepSeek's code does; on whole blocks the two agree.

use crate::safetensors::DType;
use serde_json::Value;

/// A scale tensor's name is its weight's name with this appended (`X.weight` → `X.weight_scale_inv`).
pub const SCALE_SUFFIX: &str = "_scale_inv";

/// The `quantization_config` of an FP8 checkpoint FreezeTune reads: the weight blocks one scale covers (rows,
/// columns), or `None` for one scale per matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scheme {
    pub block: Option<(u64, u64)>,
}

/// The keys of transformers' FineGrainedFP8Config (and DeepSeek's `fmt`); any other is refused by name.
const KEYS: [&str; 6] = [
    "quant_method",
    "fmt",
    "activation_scheme",
    "weight_block_size",
    "modules_to_not_convert",
    "dequantize",
];

impl Scheme {
    /// The FP8 scheme of a config.json (`quantization_config.quant_method` = "fp8"), `None` for any other config.
    /// What FreezeTune cannot read exactly is refused by name: another format than e4m3, static activation scales
    /// (calibrated per tensor, which transformers' dequantization drops), a malformed block size, an unknown key.
    pub fn from_config(raw: &Value) -> std::result::Result<Option<Scheme>, String> {
        let top = raw.get("quantization_config");
        let q = top.or_else(|| raw.get("text_config").and_then(|t| t.get("quantization_config")));
        let Some(q) = q.filter(|q| q.get("quant_method").and_then(Value::as_str) == Some("fp8")) else {
            return Ok(None);
        };
        let bad = |why: String| format!("quantization_config (FP8): {why}");
        let map = q.as_object().expect("has quant_method");
        if let Some(k) = map.keys().find(|k| !KEYS.contains(&k.as_str())) {
            return Err(bad(format!(
                "`{k}` is a key FreezeTune does not know; it reads {}",
                KEYS.join(", ")
            )));
        }
        if let Some(fmt) = q.get("fmt").filter(|f| !f.is_null()) {
            if fmt.as_str() != Some("e4m3") {
                return Err(bad(format!(
                    "`fmt` is {fmt}; FreezeTune reads e4m3 (float8_e4m3fn) weights only"
                )));
            }
        }
        match q.get("activation_scheme").filter(|a| !a.is_null()) {
            None => {}
            Some(a) if a.as_str() == Some("dynamic") => {}
            Some(a) => {
                return Err(bad(format!(
                    "`activation_scheme` is {a}; FreezeTune reads dynamic FP8 checkpoints only (static ones carry \
                     calibrated activation scales it would have to drop)"
                )))
            }
        }
        let modules = q.get("modules_to_not_convert").filter(|m| !m.is_null());
        if let Some(m) = modules.filter(|m| !m.as_array().is_some_and(|a| a.iter().all(Value::is_string))) {
            return Err(bad(format!(
                "`modules_to_not_convert` is {m}; it must be a list of module names"
            )));
        }
        let block = match q.get("weight_block_size") {
            // transformers' FineGrainedFP8Config default.
            None => Some((128, 128)),
            Some(Value::Null) => None,
            Some(b) => match b.as_array().map(|a| a.iter().map(Value::as_u64).collect::<Vec<_>>()) {
                Some(v) if v.len() == 2 && v.iter().all(|d| d.is_some_and(|d| (1..=1 << 20).contains(&d))) => {
                    Some((v[0].expect("checked"), v[1].expect("checked")))
                }
                _ => {
                    return Err(bad(format!(
                        "`weight_block_size` is {b}; it must be two positive integers (rows, columns)"
                    )))
                }
            },
        };
        Ok(Some(Scheme { block }))
    }
}

/// The value of each e4m3fn code (1 sign, 4 exponent bits biased by 7, 3 mantissa bits; no infinities, NaN at
/// 0x7f and 0xff).
pub fn e4m3_value(code: u8) -> f32 {
    let sign = if code & 0x80 != 0 { -1.0 } else { 1.0 };
    let (exp, mantissa) = ((code >> 3) & 0x0f, code & 0x07);
    if exp == 0x0f && mantissa == 0x07 {
        return f32::NAN;
    }
    let magnitude = match exp {
        0 => mantissa as f32 / 8.0 * 2f32.powi(-6),
        e => (1.0 + mantissa as f32 / 8.0) * 2f32.powi(e as i32 - 7),
    };
    sign * magnitude
}

/// Whether `code` is e4m3fn's not-a-number.
pub fn is_nan_code(code: u8) -> bool {
    code & 0x7f == 0x7f
}

/// One FP8 matrix and its scales, checked against each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fp8Matrix {
    pub rows: u64,
    pub cols: u64,
    /// The rows and columns one scale covers.
    pub block: (u64, u64),
    /// The scales' dtype: F32 or BF16 (the dtype the product is computed in).
    pub scale_dtype: DType,
}

impl Fp8Matrix {
    /// The pair `name` (F8_E4M3, rows × cols) and `name_scale_inv` under `scheme`, checked: the scales must be one
    /// per block, the last ones over partial blocks.
    pub fn of(
        name: &str,
        weight: (DType, &[u64]),
        scale: (DType, &[u64]),
        scheme: &Scheme,
    ) -> std::result::Result<Fp8Matrix, String> {
        let bad = |what: String| format!("FP8 tensor {name} / {name}{SCALE_SUFFIX}: {what}");
        if weight.0 != DType::F8E4M3 {
            return Err(bad(format!("the weight is {}; it must be F8_E4M3", weight.0)));
        }
        if !matches!(scale.0, DType::F32 | DType::BF16) {
            return Err(bad(format!("the scales are {}; they must be F32 or BF16", scale.0)));
        }
        let &[rows, cols] = weight.1 else {
            return Err(bad(format!(
                "the weight's shape is {:?}; FreezeTune reads FP8 matrices (rows, columns)",
                weight.1
            )));
        };
        if rows == 0 || cols == 0 || rows.checked_mul(cols).is_none_or(|n| n > 1 << 40) {
            return Err(bad(format!(
                "the weight's shape {:?} is empty or past any model's size",
                weight.1
            )));
        }
        let block = scheme.block.unwrap_or((rows, cols));
        let grid = [rows.div_ceil(block.0), cols.div_ceil(block.1)];
        let fits = match scheme.block {
            Some(_) => scale.1 == grid,
            // One scale for the matrix, however it is shaped.
            None => scale.1.iter().product::<u64>() == 1 && scale.1.len() <= 2,
        };
        if !fits {
            return Err(bad(format!(
                "the scales' shape {:?} is not one per block of {block:?} over {rows} × {cols} ({grid:?})",
                scale.1
            )));
        }
        Ok(Fp8Matrix {
            rows,
            cols,
            block,
            scale_dtype: scale.0,
        })
    }

    /// Scale blocks down and across.
    pub fn grid(&self) -> (u64, u64) {
        (self.rows.div_ceil(self.block.0), self.cols.div_ceil(self.block.1))
    }

    pub fn numel(&self) -> u64 {
        self.rows * self.cols
    }

    /// Bytes the trainer holds for it frozen (train's fp8.rs): a byte a value, and each block's scale in f32
    /// spread along its columns.
    pub fn held_bytes(&self) -> u64 {
        self.numel() + self.grid().0 * self.cols * 4
    }

    /// The scales as f32 (exact from bf16), after checking the bytes: lengths, no NaN code, finite scales.
    pub fn check(&self, name: &str, codes: &[u8], scales: &[u8]) -> std::result::Result<Vec<f32>, String> {
        let (gr, gc) = self.grid();
        let scale_bytes = (gr * gc * self.scale_dtype.bits() / 8) as usize;
        if codes.len() as u64 != self.numel() || scales.len() != scale_bytes {
            return Err(format!(
                "FP8 tensor {name}: {} code bytes and {} scale bytes for {self:?}",
                codes.len(),
                scales.len()
            ));
        }
        if let Some(at) = codes.iter().position(|&c| is_nan_code(c)) {
            return Err(format!(
                "FP8 tensor {name}: value {at} is e4m3's not-a-number (0x{:02x}); the checkpoint is damaged",
                codes[at]
            ));
        }
        let values: Vec<f32> = match self.scale_dtype {
            DType::BF16 => scales
                .chunks_exact(2)
                .map(|b| f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16))
                .collect(),
            _ => scales
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
        };
        match values.iter().position(|s| !s.is_finite()) {
            Some(at) => Err(format!(
                "FP8 tensor {name}{SCALE_SUFFIX}: scale {at} is {}; the checkpoint is damaged",
                values[at]
            )),
            None => Ok(values),
        }
    }

    /// The dense values, row-major, as transformers computes them: the code's value times its block's scale, in
    /// f32 (exact: 4 by 24 significant bits fit), rounded to bf16 where the scales are bf16. `scales` comes from
    /// [`Fp8Matrix::check`].
    pub fn dequantize(&self, codes: &[u8], scales: &[f32]) -> Vec<f32> {
        let table: Vec<f32> = (0..=255u8).map(e4m3_value).collect();
        let (rows, cols) = (self.rows as usize, self.cols as usize);
        let (br, bc) = (self.block.0 as usize, self.block.1 as usize);
        let grid_cols = self.grid().1 as usize;
        let bf16 = self.scale_dtype == DType::BF16;
        let mut out = Vec::with_capacity(rows * cols);
        for r in 0..rows {
            let scale_row = &scales[r / br * grid_cols..][..grid_cols];
            for (c, &code) in codes[r * cols..][..cols].iter().enumerate() {
                let v = table[code as usize] * scale_row[c / bc];
                out.push(if bf16 { round_to_bf16(v) } else { v });
            }
        }
        out
    }
}

/// The dtype a dequantized matrix is listed and written in: the checkpoint's own (`torch_dtype`, or transformers
/// 5's `dtype`), which transformers casts it to; bf16 where the config names none it knows.
pub fn dense_dtype(raw: &Value) -> DType {
    let text = raw.get("text_config").unwrap_or(&Value::Null);
    let named = ["dtype", "torch_dtype"]
        .iter()
        .find_map(|k| raw.get(*k).or_else(|| text.get(*k)).and_then(Value::as_str));
    match named {
        Some("float32") => DType::F32,
        Some("float16") => DType::F16,
        _ => DType::BF16,
    }
}

/// `v` rounded to the nearest bf16 (ties to even), as f32.
pub fn round_to_bf16(v: f32) -> f32 {
    let bits = v.to_bits();
    let rounded = bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) & 0xffff_0000;
    f32::from_bits(rounded)
}

/// The weights stored as FP8 pairs among `tensors` (name, dtype), sorted: every F8_E4M3 tensor must have its
/// scales and every scale tensor its F8_E4M3 weight. Refused, as (a tensor's name, why): half a pair, FP8 in a
/// checkpoint without an FP8 `quantization_config`, e5m2, and the static scheme's activation scales. A checkpoint
/// with neither FP8 tensors nor an FP8 scheme is none of this function's business.
pub fn pairs<'a>(
    tensors: impl Iterator<Item = (&'a str, DType)>,
    scheme: Option<&Scheme>,
) -> std::result::Result<Vec<String>, (String, String)> {
    let dtypes: std::collections::HashMap<&str, DType> = tensors.collect();
    let fp8 = |d: &DType| matches!(d, DType::F8E4M3 | DType::F8E5M2);
    if scheme.is_none() && !dtypes.values().any(fp8) {
        return Ok(Vec::new());
    }
    // In name order, so a checkpoint with several faults always reports the same one.
    let mut names: Vec<(&str, DType)> = dtypes.iter().map(|(n, d)| (*n, *d)).collect();
    names.sort_unstable_by_key(|(n, _)| *n);
    let mut out = Vec::new();
    for (name, dtype) in names {
        if dtype == DType::F8E5M2 {
            return Err((name.into(), "is F8_E5M2; FreezeTune reads e4m3 FP8 weights only".into()));
        }
        if name.ends_with(".activation_scale") || name.ends_with(".input_scale") {
            return Err((
                name.into(),
                "is a static FP8 activation scale; FreezeTune reads dynamic FP8 checkpoints only".into(),
            ));
        }
        if let Some(base) = name.strip_suffix(SCALE_SUFFIX) {
            if dtypes.get(base) != Some(&DType::F8E4M3) {
                return Err((
                    name.into(),
                    format!("is FP8 scales without their F8_E4M3 weight {base}"),
                ));
            }
        } else if dtype == DType::F8E4M3 {
            if scheme.is_none() {
                return Err((
                    name.into(),
                    "is F8_E4M3, but config.json has no FP8 quantization_config (quant_method \"fp8\") to say how \
                     it is scaled"
                        .into(),
                ));
            }
            if !dtypes.contains_key(format!("{name}{SCALE_SUFFIX}").as_str()) {
                return Err((
                    name.into(),
                    format!("is F8_E4M3 without its scales {name}{SCALE_SUFFIX}"),
                ));
            }
            out.push(name.to_string());
        }
    }
    Ok(out)
}

/// The module transformers converts to FP8 (or leaves out of it: `modules_to_not_convert`, which it matches against
/// its own module names) that holds weight `name` of a `model_type` model: the weight's module under the name
/// transformers 5 gives it (a wrapper's `language_model.model.*` is `model.language_model.*`; Mixtral's
/// `block_sparse_moe` is `mlp`), or, for experts stored one linear each, the layer's `….mlp.experts`, which
/// transformers loads as one fused module.
pub fn conversion_unit(name: &str, model_type: &str) -> String {
    let name = match name.strip_prefix("language_model.model.") {
        Some(rest) => format!("model.language_model.{rest}"),
        None => name.to_string(),
    };
    let runtime = crate::runtime_names::runtime_name(&name, model_type);
    // runtime_name gives a fused expert its layer's stacked parameter, `….mlp.experts.{gate_up_proj,down_proj}`.
    let fused = [".mlp.experts.gate_up_proj", ".mlp.experts.down_proj"]
        .iter()
        .find_map(|p| runtime.strip_suffix(p));
    match fused {
        Some(layer) => format!("{layer}.mlp.experts"),
        None => runtime.strip_suffix(".weight").unwrap_or(&runtime).to_string(),
    }
}

/// Refuses a hand-off of an FP8 checkpoint to `engine` (LLaMA-Factory, Axolotl): on a GPU that runs FP8,
/// transformers loads its projections as FP8Linear modules, which do not train.
pub fn refuse_handoff(layout: &crate::layout::ModelLayout, engine: &str) -> std::result::Result<(), String> {
    let fp8 = layout
        .tensors()
        .find(|t| t.gguf.as_ref().is_some_and(|b| b.ggml_type == "fp8_e4m3"));
    match fp8 {
        None => Ok(()),
        Some(t) => Err(format!(
            "{} is an FP8 checkpoint ({} and others are e4m3 codes): on a GPU that runs FP8 (compute capability \
             8.9 or more) transformers loads such projections as FP8Linear modules, which {engine} cannot train. \
             Train it with FreezeTune (frozen layers stay FP8, trained ones become dense), or hand off the \
             full-precision checkpoint",
            layout.model_dir.display(),
            t.name
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn e4m3fn_codes_decode_to_their_values() {
        assert_eq!(e4m3_value(0x00), 0.0);
        assert_eq!(e4m3_value(0x01), 2f32.powi(-9));
        assert_eq!(e4m3_value(0x38), 1.0);
        assert_eq!(e4m3_value(0x7e), 448.0);
        assert_eq!(e4m3_value(0xfe), -448.0);
        assert_eq!(e4m3_value(0xb9), -1.125);
        assert!(e4m3_value(0x7f).is_nan() && e4m3_value(0xff).is_nan());
        assert!((0..=255u8).filter(|&c| is_nan_code(c)).count() == 2);
    }

    #[test]
    fn scheme_reads_transformers_keys_and_refuses_what_it_cannot_do_exactly() {
        let deepseek = json!({"quantization_config": {"activation_scheme": "dynamic", "fmt": "e4m3",
            "quant_method": "fp8", "weight_block_size": [128, 128]}});
        assert_eq!(
            Scheme::from_config(&deepseek).unwrap(),
            Some(Scheme {
                block: Some((128, 128))
            })
        );
        let unsaid = json!({"quantization_config": {"quant_method": "fp8"}});
        assert_eq!(
            Scheme::from_config(&unsaid).unwrap(),
            Some(Scheme {
                block: Some((128, 128))
            })
        );
        let per_tensor = json!({"quantization_config": {"quant_method": "fp8", "weight_block_size": null}});
        assert_eq!(Scheme::from_config(&per_tensor).unwrap(), Some(Scheme { block: None }));
        assert_eq!(
            Scheme::from_config(&json!({"quantization_config": {"quant_method": "mxfp4"}})).unwrap(),
            None
        );
        let refused = |q: Value, word: &str| {
            let e = Scheme::from_config(&json!({ "quantization_config": q })).unwrap_err();
            assert!(e.contains(word), "{e}");
        };
        refused(
            json!({"quant_method": "fp8", "activation_scheme": "static"}),
            "activation_scheme",
        );
        refused(json!({"quant_method": "fp8", "fmt": "e5m2"}), "fmt");
        refused(
            json!({"quant_method": "fp8", "weight_block_size": [128]}),
            "weight_block_size",
        );
        refused(
            json!({"quant_method": "fp8", "weight_block_size": [0, 128]}),
            "weight_block_size",
        );
        refused(
            json!({"quant_method": "fp8", "kv_cache_scheme": "fp8"}),
            "kv_cache_scheme",
        );
        refused(
            json!({"quant_method": "fp8", "modules_to_not_convert": "lm_head"}),
            "modules_to_not_convert",
        );
    }

    #[test]
    fn partial_blocks_take_the_last_scales_and_bf16_scales_round_the_product() {
        // 3 × 5 in blocks of 2 × 2: scales 2 × 3.
        let scheme = Scheme { block: Some((2, 2)) };
        let m = Fp8Matrix::of("w", (DType::F8E4M3, &[3, 5]), (DType::F32, &[2, 3]), &scheme).unwrap();
        let codes: Vec<u8> = vec![0x38; 15]; // all 1.0
        let scales: Vec<u8> = (1..=6).flat_map(|s| (s as f32).to_le_bytes()).collect();
        let s = m.check("w", &codes, &scales).unwrap();
        let v = m.dequantize(&codes, &s);
        assert_eq!(&v[..5], &[1.0, 1.0, 2.0, 2.0, 3.0]);
        assert_eq!(&v[10..], &[4.0, 4.0, 5.0, 5.0, 6.0]);
        assert_eq!(m.held_bytes(), 15 + 2 * 5 * 4);
        // bf16 scales: 1.125 × (1 + 2^-7) is 1.1337890625 in f32, 1.1328125 once rounded to bf16.
        let m = Fp8Matrix::of("w", (DType::F8E4M3, &[1, 1]), (DType::BF16, &[1, 1]), &scheme).unwrap();
        let scale = (1.0f32 + 2f32.powi(-7)).to_bits() >> 16;
        let s = m.check("w", &[0x39], &(scale as u16).to_le_bytes()).unwrap();
        assert_eq!(m.dequantize(&[0x39], &s), vec![1.1328125]);
    }

    #[test]
    fn mismatched_damaged_or_lone_tensors_are_refused_by_name() {
        let scheme = Scheme {
            block: Some((128, 128)),
        };
        // DeepSeek-V3's kv_a_proj_with_mqa: 576 rows are 4.5 blocks, so 5 rows of scales.
        let ok = Fp8Matrix::of("kv", (DType::F8E4M3, &[576, 7168]), (DType::F32, &[5, 56]), &scheme);
        assert_eq!(ok.unwrap().grid(), (5, 56));
        let e = Fp8Matrix::of("kv", (DType::F8E4M3, &[576, 7168]), (DType::F32, &[4, 56]), &scheme).unwrap_err();
        assert!(e.contains("kv_scale_inv") && e.contains("one per block"), "{e}");
        let e = Fp8Matrix::of("x", (DType::F8E4M3, &[4, 8, 8]), (DType::F32, &[1, 1]), &scheme).unwrap_err();
        assert!(e.contains("matrices"), "{e}");
        let e = Fp8Matrix::of("x", (DType::F8E4M3, &[8, 8]), (DType::F16, &[1, 1]), &scheme).unwrap_err();
        assert!(e.contains("F16"), "{e}");
        let m = Fp8Matrix::of("x", (DType::F8E4M3, &[1, 2]), (DType::F32, &[1, 1]), &scheme).unwrap();
        assert!(m
            .check("x", &[0, 0x7f], &1f32.to_le_bytes())
            .unwrap_err()
            .contains("not-a-number"));
        assert!(m
            .check("x", &[0, 0], &f32::NAN.to_le_bytes())
            .unwrap_err()
            .contains("x_scale_inv"));
        assert!(m
            .check("x", &[0], &1f32.to_le_bytes())
            .unwrap_err()
            .contains("1 code bytes"));

        let w = "model.layers.0.mlp.down_proj.weight";
        let s = format!("{w}{SCALE_SUFFIX}");
        let both = [(w, DType::F8E4M3), (s.as_str(), DType::F32), ("a.weight", DType::BF16)];
        assert_eq!(pairs(both.iter().copied(), Some(&scheme)).unwrap(), vec![w]);
        let (name, why) = pairs(both[..1].iter().copied(), Some(&scheme)).unwrap_err();
        assert!(name == w && why.contains(&s), "{name}: {why}");
        let (name, _) = pairs(both[1..].iter().copied(), Some(&scheme)).unwrap_err();
        assert_eq!(name, s);
        let (_, why) = pairs(both.iter().copied(), None).unwrap_err();
        assert!(why.contains("quantization_config"), "{why}");
        let e5 = [("x.weight", DType::F8E5M2)];
        assert!(pairs(e5.iter().copied(), Some(&scheme)).unwrap_err().1.contains("e4m3"));
        let act = [("model.layers.0.mlp.down_proj.input_scale", DType::F32)];
        assert!(pairs(act.iter().copied(), Some(&scheme))
            .unwrap_err()
            .1
            .contains("static"));
        // Without FP8 tensors or an FP8 scheme, such names are ordinary tensors (the decoder says if it reads them).
        assert_eq!(pairs(act.iter().copied(), None).unwrap(), Vec::<String>::new());
    }

    #[test]
    fn units_are_the_modules_transformers_converts_under_its_own_names() {
        let expert = "model.layers.3.mlp.experts.17.gate_proj.weight";
        assert_eq!(conversion_unit(expert, "deepseek_v3"), "model.layers.3.mlp.experts");
        let shared = "model.layers.3.mlp.shared_experts.gate_proj.weight";
        assert_eq!(
            conversion_unit(shared, "deepseek_v3"),
            "model.layers.3.mlp.shared_experts.gate_proj"
        );
        let q = "model.layers.0.self_attn.q_proj.weight";
        assert_eq!(conversion_unit(q, "qwen3"), "model.layers.0.self_attn.q_proj");
        let mixtral = "model.layers.2.block_sparse_moe.experts.5.w1.weight";
        assert_eq!(conversion_unit(mixtral, "mixtral"), "model.layers.2.mlp.experts");
        let router = "model.layers.2.block_sparse_moe.gate.weight";
        assert_eq!(conversion_unit(router, "mixtral"), "model.layers.2.mlp.gate");
        let wrapped = "language_model.model.layers.1.mlp.down_proj.weight";
        assert_eq!(
            conversion_unit(wrapped, "mistral3"),
            "model.language_model.layers.1.mlp.down_proj"
        );
    }
}
