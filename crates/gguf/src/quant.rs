//! Which GGML type each tensor gets, llama.cpp's rules (`llama-quant.cpp`'s `llama_tensor_get_type`) for the
//! types export offers, and the encoding of f32 rows into them through candle's own (k-)quant code.

use crate::format::bytes_for;
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use rayon::prelude::*;

/// What `export-gguf --type` offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportType {
    F32,
    F16,
    Bf16,
    Q8_0,
    Q4KM,
}

impl ExportType {
    pub const ALL: [ExportType; 5] = [
        ExportType::F32,
        ExportType::F16,
        ExportType::Bf16,
        ExportType::Q8_0,
        ExportType::Q4KM,
    ];

    pub fn parse(name: &str) -> Option<ExportType> {
        Self::ALL.into_iter().find(|t| t.name().eq_ignore_ascii_case(name))
    }

    /// Every type's name, for messages: "f32, f16, bf16, q8_0, q4_k_m".
    pub fn names() -> String {
        Self::ALL.map(ExportType::name).join(", ")
    }

    pub fn name(self) -> &'static str {
        match self {
            ExportType::F32 => "f32",
            ExportType::F16 => "f16",
            ExportType::Bf16 => "bf16",
            ExportType::Q8_0 => "q8_0",
            ExportType::Q4KM => "q4_k_m",
        }
    }

    /// `general.file_type` (llama.h's `llama_ftype`).
    pub fn file_type(self) -> u32 {
        match self {
            ExportType::F32 => 0,
            ExportType::F16 => 1,
            ExportType::Q8_0 => 7,
            ExportType::Q4KM => 15,
            ExportType::Bf16 => 32,
        }
    }

    pub fn quantized(self) -> bool {
        matches!(self, ExportType::Q8_0 | ExportType::Q4KM)
    }
}

/// Where a tensor sits, for the rules that treat some tensors specially.
pub struct TensorRole<'a> {
    pub gguf_name: &'a str,
    pub shape: &'a [usize],
    /// The model has a separate `output.weight` (else the token embeddings are also the output).
    pub has_output: bool,
    pub layer: Option<usize>,
    pub num_layers: usize,
    /// The model's routed experts per sparse layer (0 for a dense model): llama.cpp gives an 8-expert model
    /// (Mixtral's shape) more bits in attention.
    pub experts: usize,
}

/// llama.cpp's "more bits here" layers for Q4_K_M's attn_v and ffn_down: the first and last eighth and every
/// third one between.
fn use_more_bits(layer: usize, layers: usize) -> bool {
    let (i, n) = (layer as i64, layers as i64);
    i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2
}

/// The type a tensor is stored as.
pub fn tensor_type(kind: ExportType, role: &TensorRole) -> GgmlDType {
    // Vectors (norms, biases) and rope factors stay f32 in every llama.cpp file, and so do stacked biases
    // (gpt-oss's experts'). So is a mixture-of-experts router, as llama.cpp's converter and quantizer keep it.
    let name = role.gguf_name;
    if role.shape.len() < 2
        || name.ends_with(".bias")
        || name.ends_with("_norm.weight")
        || name.starts_with("rope_")
        || name.ends_with("ffn_gate_inp.weight")
    {
        return GgmlDType::F32;
    }
    let want = match kind {
        ExportType::F32 => return GgmlDType::F32,
        ExportType::F16 => return GgmlDType::F16,
        ExportType::Bf16 => return GgmlDType::BF16,
        ExportType::Q8_0 => GgmlDType::Q8_0,
        ExportType::Q4KM => q4_k_m_type(role),
    };
    fit_rows(want, *role.shape.last().expect("2-D or more"))
}

fn q4_k_m_type(role: &TensorRole) -> GgmlDType {
    let name = role.gguf_name;
    let layer = role.layer.unwrap_or(0);
    let is_output = name == "output.weight" || (!role.has_output && name == "token_embd.weight");
    let more_bits = |yes: bool| if yes { GgmlDType::Q6K } else { GgmlDType::Q4K };
    let eight_experts = role.experts == 8;
    if is_output {
        GgmlDType::Q6K
    } else if name.ends_with("attn_v.weight") && eight_experts {
        GgmlDType::Q8_0
    } else if name.ends_with("attn_v.weight") {
        more_bits(use_more_bits(layer, role.num_layers))
    } else if name.ends_with("attn_k.weight") && eight_experts {
        GgmlDType::Q8_0
    } else if name.contains("ffn_down") {
        // Every down projection: dense, the stacked experts' and the shared expert's (llama.cpp matches the name's
        // "ffn_down" and reads the layer from it).
        more_bits(use_more_bits(layer, role.num_layers))
    } else if name.ends_with("attn_qkv.weight") || (name.ends_with("attn_output.weight") && eight_experts) {
        GgmlDType::Q5K
    } else {
        GgmlDType::Q4K
    }
}

/// A row length that is not a whole number of blocks takes llama.cpp's fallback type (k-quants need 256).
fn fit_rows(want: GgmlDType, cols: usize) -> GgmlDType {
    if cols % want.block_size() == 0 {
        return want;
    }
    let fallback = match want {
        GgmlDType::Q4K => GgmlDType::Q5_0,
        GgmlDType::Q5K => GgmlDType::Q5_1,
        GgmlDType::Q6K => GgmlDType::Q8_0,
        _ => GgmlDType::F16,
    };
    if cols % fallback.block_size() == 0 {
        fallback
    } else {
        GgmlDType::F16
    }
}

/// Encodes row-major f32 values (`cols` per row) as `dtype`: f32/f16/bf16 rounded to nearest even, block types
/// through candle's quantizers (q4_K: `kquant`, as llama.cpp does it today), rows split across threads (each row is a whole number of blocks, so chunks of
/// rows concatenate into the tensor's bytes).
pub fn encode(values: &[f32], cols: usize, dtype: GgmlDType) -> candle_core::Result<Vec<u8>> {
    match dtype {
        GgmlDType::F32 => return Ok(values.iter().flat_map(|v| v.to_le_bytes()).collect()),
        GgmlDType::F16 => {
            return Ok(values
                .par_iter()
                .flat_map_iter(|v| half::f16::from_f32(*v).to_le_bytes())
                .collect())
        }
        GgmlDType::BF16 => {
            return Ok(values
                .par_iter()
                .flat_map_iter(|v| half::bf16::from_f32(*v).to_le_bytes())
                .collect())
        }
        _ => {}
    }
    let rows = values.len() / cols.max(1);
    let threads = rayon::current_num_threads().max(1);
    let rows_per_chunk = rows.div_ceil(threads * 4).max(1);
    let chunks: Vec<Vec<u8>> = values
        .par_chunks(rows_per_chunk * cols)
        .map(|chunk| {
            if dtype == GgmlDType::Q4K {
                return Ok(crate::kquant::quantize_q4k(chunk));
            }
            let t = Tensor::from_slice(chunk, (chunk.len() / cols, cols), &Device::Cpu)?;
            Ok(QTensor::quantize(&t, dtype)?.data()?.into_owned())
        })
        .collect::<candle_core::Result<_>>()?;
    let out: Vec<u8> = chunks.concat();
    debug_assert_eq!(out.len(), bytes_for(dtype, values.len()));
    Ok(out)
}

/// A tensor's values as little-endian bytes in its own dtype (f32, f16 or bf16; anything else as f32).
pub fn le_bytes(t: &Tensor) -> candle_core::Result<Vec<u8>> {
    let t = t.flatten_all()?;
    Ok(match t.dtype() {
        candle_core::DType::F16 => t.to_vec1::<half::f16>()?.iter().flat_map(|v| v.to_le_bytes()).collect(),
        candle_core::DType::BF16 => t
            .to_vec1::<half::bf16>()?
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        _ => t
            .to_dtype(candle_core::DType::F32)?
            .to_vec1::<f32>()?
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(bytes: &[u8], shape: &[usize], dtype: GgmlDType) -> candle_core::Result<Vec<f32>> {
        candle_core::quantized::ggml_file::qtensor_from_ggml(dtype, bytes, shape.to_vec(), &Device::Cpu)?
            .dequantize(&Device::Cpu)?
            .flatten_all()?
            .to_vec1::<f32>()
    }

    fn role<'a>(name: &'a str, shape: &'a [usize], layer: usize) -> TensorRole<'a> {
        TensorRole {
            gguf_name: name,
            shape,
            has_output: true,
            layer: Some(layer),
            num_layers: 8,
            experts: 0,
        }
    }

    #[test]
    fn q4_k_m_follows_llama_cpp() {
        let s = [512, 512];
        let t = |n: &str, l| tensor_type(ExportType::Q4KM, &role(n, &s, l));
        assert_eq!(t("output.weight", 0), GgmlDType::Q6K);
        assert_eq!(t("blk.0.attn_v.weight", 0), GgmlDType::Q6K);
        assert_eq!(t("blk.1.attn_v.weight", 1), GgmlDType::Q4K);
        assert_eq!(t("blk.3.ffn_down.weight", 3), GgmlDType::Q6K); // (3 - 1) % 3 == 2
        assert_eq!(t("blk.7.ffn_down.weight", 7), GgmlDType::Q6K);
        assert_eq!(t("blk.2.attn_q.weight", 2), GgmlDType::Q4K);
        assert_eq!(t("blk.2.attn_qkv.weight", 2), GgmlDType::Q5K);
        assert_eq!(t("blk.2.attn_norm.weight", 2), GgmlDType::F32);
        // Rows of 64 are not whole k-blocks: llama.cpp's fallbacks.
        let narrow = [128, 64];
        assert_eq!(
            tensor_type(ExportType::Q4KM, &role("blk.2.attn_q.weight", &narrow, 2)),
            GgmlDType::Q5_0
        );
        assert_eq!(
            tensor_type(ExportType::Q4KM, &role("output.weight", &narrow, 0)),
            GgmlDType::Q8_0
        );
        let tied = TensorRole {
            has_output: false,
            ..role("token_embd.weight", &s, 0)
        };
        assert_eq!(tensor_type(ExportType::Q4KM, &tied), GgmlDType::Q6K);
        assert_eq!(
            tensor_type(ExportType::Q8_0, &role("blk.0.ffn_up.weight", &[64, 48], 0)),
            GgmlDType::F16
        );
        // An 8-expert model (Mixtral 8x7B): q8_0 keys and values, q5_K attention output; a shared expert's down
        // projection counts as the layer's.
        let eight = |n: &str, l| {
            let role = TensorRole {
                experts: 8,
                ..role(n, &s, l)
            };
            tensor_type(ExportType::Q4KM, &role)
        };
        assert_eq!(eight("blk.1.attn_v.weight", 1), GgmlDType::Q8_0);
        assert_eq!(eight("blk.1.attn_k.weight", 1), GgmlDType::Q8_0);
        assert_eq!(eight("blk.1.attn_output.weight", 1), GgmlDType::Q5K);
        assert_eq!(eight("blk.1.attn_q.weight", 1), GgmlDType::Q4K);
        assert_eq!(t("blk.1.attn_output.weight", 1), GgmlDType::Q4K);
        assert_eq!(t("blk.7.ffn_down_shexp.weight", 7), GgmlDType::Q6K);
        assert_eq!(t("blk.4.ffn_down_shexp.weight", 4), GgmlDType::Q4K);
    }

    #[test]
    fn encode_and_decode_agree() {
        let cols = 256;
        let values: Vec<f32> = (0..cols * 6).map(|i| ((i * 37 % 101) as f32 - 50.0) / 40.0).collect();
        for (dtype, tol) in [
            (GgmlDType::F16, 1e-3),
            (GgmlDType::Q8_0, 2e-2),
            (GgmlDType::Q6K, 3e-2),
            (GgmlDType::Q4K, 1.5e-1),
        ] {
            let bytes = encode(&values, cols, dtype).unwrap();
            assert_eq!(bytes.len(), bytes_for(dtype, values.len()));
            let back = decode(&bytes, &[6, cols], dtype).unwrap();
            let worst = values
                .iter()
                .zip(&back)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(worst < tol, "{dtype:?}: worst error {worst}");
        }
    }
}
