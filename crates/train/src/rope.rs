//! Rotary position embeddings as transformers 5 computes them (`modeling_rope_utils.py`): one `RopeSpec` per rope a
//! model uses (Gemma 3 and OLMo 3 have one per layer type), read from a `rope_parameters` / `rope_scaling` dict.
//! Every key of the dict is read or refused: a scaling parameter left out would rotate by other angles than the
//! model's, without a word.

use serde_json::{Map, Value};

/// How the inverse frequencies are scaled.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    Default,
    /// Positions divided by `factor` (every frequency divided by it).
    Linear {
        factor: f64,
    },
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
    /// YaRN: interpolation for long wavelengths, extrapolation for short ones, a linear ramp between.
    Yarn {
        factor: f64,
        original_max_position_embeddings: f64,
        beta_fast: f64,
        beta_slow: f64,
        truncate: bool,
    },
    /// Phi-3's LongRoPE: per-frequency divisors, the long ones when a sequence runs past the original context.
    LongRope {
        short_factor: Vec<f64>,
        long_factor: Vec<f64>,
        original_max_position_embeddings: usize,
    },
    /// Gemma 4's full-attention rope: the first `partial_rotary_factor` of each half of the head turns, at
    /// frequencies `theta^(-2i / head_dim)` (exponents over the whole head, not over the turning part), divided by
    /// `factor`; the rest of each half has frequency 0 and passes through. The tables span the whole head.
    Proportional {
        factor: f64,
    },
}

/// One rotary embedding: its base, the share of each head it rotates, its scaling, and the factor cos and sin are
/// multiplied by (YaRN's and LongRoPE's attention factor; 1 otherwise).
#[derive(Debug, Clone, PartialEq)]
pub struct RopeSpec {
    pub theta: f64,
    pub partial_rotary_factor: f64,
    pub scaling: RopeScaling,
    pub attention_factor: f64,
}

/// Keys any rope dict may hold. Ministral 3 repeats `max_position_embeddings` here; transformers reads the
/// top-level one.
const COMMON_ROPE_KEYS: [&str; 5] = [
    "rope_type",
    "type",
    "rope_theta",
    "partial_rotary_factor",
    "max_position_embeddings",
];
const LINEAR_KEYS: &[&str] = &["factor"];
const LLAMA3_KEYS: &[&str] = &[
    "factor",
    "low_freq_factor",
    "high_freq_factor",
    "original_max_position_embeddings",
];
const YARN_KEYS: &[&str] = &[
    "factor",
    "original_max_position_embeddings",
    "attention_factor",
    "beta_fast",
    "beta_slow",
    "mscale",
    "mscale_all_dim",
    "truncate",
];
const PROPORTIONAL_KEYS: &[&str] = &["factor"];
const LONGROPE_KEYS: &[&str] = &[
    "factor",
    "original_max_position_embeddings",
    "attention_factor",
    "short_factor",
    "long_factor",
];

/// Whether any rope type reads `key`; any other key is refused before the dict is read.
fn known_key(key: &str) -> bool {
    let scaling = [LINEAR_KEYS, LLAMA3_KEYS, YARN_KEYS, LONGROPE_KEYS, PROPORTIONAL_KEYS];
    COMMON_ROPE_KEYS.contains(&key) || scaling.iter().any(|keys| keys.contains(&key))
}

/// What a rope dict may leave out and the model's config.json supplies.
pub struct RopeContext {
    /// The theta when the dict has none.
    pub theta: f64,
    /// The top-level `partial_rotary_factor` (transformers 5 moves it into the dict).
    pub partial_rotary_factor: Option<f64>,
    pub max_position_embeddings: Option<f64>,
    /// The top-level `original_max_position_embeddings` (Phi-3 keeps it there).
    pub original_max_position_embeddings: Option<f64>,
    /// The top-level value wins over the dict's (Phi-3, as transformers reads it).
    pub original_overrides: bool,
}

impl RopeSpec {
    /// Reads one rope dict (`rope_parameters`, or legacy `rope_scaling`); `where_` names it in errors.
    pub fn read(dict: Option<&Map<String, Value>>, ctx: &RopeContext, where_: &str) -> Result<RopeSpec, String> {
        let empty = Map::new();
        let d = dict.unwrap_or(&empty);
        if let Some((k, v)) = d.iter().find(|(k, _)| !known_key(k)) {
            return Err(format!(
                "`{where_}` has key `{k}` = {v}, which FreezeTune does not understand: refusing rather than \
                 rotating by other angles than the model's"
            ));
        }
        let num = |k: &str| match d.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| format!("`{where_}.{k}` must be a number, not {v}")),
        };
        let need = |k: &str, fallback: Option<f64>| {
            num(k)?
                .or(fallback)
                .ok_or_else(|| format!("`{where_}` lacks `{k}`, which its rope type needs"))
        };
        let theta = num("rope_theta")?.unwrap_or(ctx.theta);
        let partial = num("partial_rotary_factor")?
            .or(ctx.partial_rotary_factor)
            .unwrap_or(1.0);
        if !(partial > 0.0 && partial <= 1.0) {
            return Err(format!("`partial_rotary_factor` must lie in (0, 1], not {partial}"));
        }
        let kind = d
            .get("rope_type")
            .or_else(|| d.get("type"))
            .and_then(Value::as_str)
            .unwrap_or("default");
        let orig = || match (ctx.original_overrides, ctx.original_max_position_embeddings) {
            (true, Some(o)) => Ok(o),
            _ => need("original_max_position_embeddings", ctx.original_max_position_embeddings),
        };
        // `factor` may be left out by yarn and longrope: transformers derives it from the two context lengths.
        let derived_factor = |orig: f64| match (num("factor")?, ctx.max_position_embeddings) {
            (Some(f), _) => Ok(f),
            (None, Some(max)) => Ok(max / orig),
            (None, None) => Err(format!(
                "`{where_}` lacks `factor` and config.json max_position_embeddings"
            )),
        };
        let (scaling, attention_factor) = match kind {
            "default" => (RopeScaling::Default, 1.0),
            "linear" => (
                RopeScaling::Linear {
                    factor: need("factor", None)?,
                },
                1.0,
            ),
            "llama3" => (
                RopeScaling::Llama3 {
                    factor: need("factor", None)?,
                    low_freq_factor: need("low_freq_factor", None)?,
                    high_freq_factor: need("high_freq_factor", None)?,
                    original_max_position_embeddings: orig()?,
                },
                1.0,
            ),
            "yarn" => {
                let orig = orig()?;
                let factor = derived_factor(orig)?;
                let attention = match (num("attention_factor")?, num("mscale")?, num("mscale_all_dim")?) {
                    (Some(a), _, _) => a,
                    (None, Some(m), Some(all)) if m != 0.0 && all != 0.0 => {
                        yarn_mscale(factor, m) / yarn_mscale(factor, all)
                    }
                    _ => yarn_mscale(factor, 1.0),
                };
                let truncate = match d.get("truncate") {
                    None | Some(Value::Null) => true,
                    Some(v) => v
                        .as_bool()
                        .ok_or_else(|| format!("`{where_}.truncate` must be true or false"))?,
                };
                let scaling = RopeScaling::Yarn {
                    factor,
                    original_max_position_embeddings: orig,
                    beta_fast: num("beta_fast")?.filter(|&b| b != 0.0).unwrap_or(32.0),
                    beta_slow: num("beta_slow")?.filter(|&b| b != 0.0).unwrap_or(1.0),
                    truncate,
                };
                (scaling, attention)
            }
            "proportional" => (
                RopeScaling::Proportional {
                    factor: num("factor")?.unwrap_or(1.0),
                },
                1.0,
            ),
            "longrope" => {
                let orig = orig()?;
                let factor = derived_factor(orig)?;
                let attention = match num("attention_factor")? {
                    Some(a) => a,
                    None if factor <= 1.0 => 1.0,
                    None => (1.0 + factor.ln() / orig.ln()).sqrt(),
                };
                let list = |k: &str| -> Result<Vec<f64>, String> {
                    d.get(k)
                        .and_then(Value::as_array)
                        .and_then(|a| a.iter().map(Value::as_f64).collect::<Option<Vec<_>>>())
                        .ok_or_else(|| format!("`{where_}.{k}` must be a list of numbers"))
                };
                let scaling = RopeScaling::LongRope {
                    short_factor: list("short_factor")?,
                    long_factor: list("long_factor")?,
                    original_max_position_embeddings: orig as usize,
                };
                (scaling, attention)
            }
            other => {
                return Err(format!(
                    "`{where_}` rope type {other:?} is not supported (default, linear, llama3, yarn, longrope \
                     and proportional are): refusing rather than rotating by other angles than the model's"
                ))
            }
        };
        let spec = RopeSpec {
            theta,
            partial_rotary_factor: partial,
            scaling,
            attention_factor,
        };
        spec.refuse_unused_keys(d, where_)?;
        Ok(spec)
    }

    /// A key the dict sets that this rope type does not read (llama3's `low_freq_factor` on a yarn rope, say) is
    /// refused: transformers would ignore it too, but a config that sets it was meant for other math.
    fn refuse_unused_keys(&self, d: &Map<String, Value>, where_: &str) -> Result<(), String> {
        let used: &[&str] = match self.scaling {
            RopeScaling::Default => &[],
            RopeScaling::Linear { .. } => LINEAR_KEYS,
            RopeScaling::Llama3 { .. } => LLAMA3_KEYS,
            RopeScaling::Yarn { .. } => YARN_KEYS,
            RopeScaling::LongRope { .. } => LONGROPE_KEYS,
            RopeScaling::Proportional { .. } => PROPORTIONAL_KEYS,
        };
        for (k, v) in d {
            if !v.is_null() && !used.contains(&k.as_str()) && !COMMON_ROPE_KEYS.contains(&k.as_str()) {
                return Err(format!(
                    "`{where_}` sets `{k}` = {v}, which its rope type does not use: refusing a config meant for \
                     other math"
                ));
            }
        }
        Ok(())
    }

    /// How many dimensions of each head rotate (the rest pass through), as transformers rounds it.
    pub fn rotary_dim(&self, head_dim: usize) -> usize {
        if let RopeScaling::Proportional { .. } = self.scaling {
            // Its tables span the head; the dimensions past the factor turn by angle 0.
            return head_dim - head_dim % 2;
        }
        let dim = (head_dim as f64 * self.partial_rotary_factor) as usize;
        dim - dim % 2
    }

    /// Whether a forward pass whose last position is `len - 1` uses LongRoPE's long factors.
    pub fn uses_long_factors(&self, len: usize) -> bool {
        matches!(&self.scaling, RopeScaling::LongRope { original_max_position_embeddings: o, .. } if len > *o)
    }

    /// The inverse frequencies (rotary_dim / 2) for a forward pass covering positions `0..len`.
    pub fn inv_freq(&self, head_dim: usize, len: usize) -> Result<Vec<f32>, String> {
        let dim = self.rotary_dim(head_dim);
        let base = |i: usize| self.theta.powf((2 * i) as f64 / dim as f64);
        let half = dim / 2;
        let freqs: Vec<f64> = match &self.scaling {
            RopeScaling::Default => (0..half).map(|i| 1.0 / base(i)).collect(),
            RopeScaling::Linear { factor } => (0..half).map(|i| 1.0 / base(i) / factor).collect(),
            RopeScaling::Proportional { factor } => {
                // transformers: int(partial_rotary_factor · head_dim // 2) turning frequencies, then zeros.
                let turning = (self.partial_rotary_factor * head_dim as f64 / 2.0).floor() as usize;
                (0..half)
                    .map(|i| if i < turning { 1.0 / base(i) / factor } else { 0.0 })
                    .collect()
            }
            RopeScaling::Llama3 {
                factor,
                low_freq_factor: low,
                high_freq_factor: high,
                original_max_position_embeddings: orig,
            } => (0..half)
                .map(|i| llama3_frequency(1.0 / base(i), *factor, *low, *high, *orig))
                .collect(),
            RopeScaling::Yarn {
                factor,
                original_max_position_embeddings: orig,
                beta_fast,
                beta_slow,
                truncate,
            } => {
                let (low, high) = yarn_correction_range(*beta_fast, *beta_slow, dim, self.theta, *orig, *truncate);
                (0..half)
                    .map(|i| {
                        let ramp = yarn_ramp(i as f64, low, high);
                        let extrapolation = 1.0 / base(i);
                        let interpolation = extrapolation / factor;
                        // transformers: interpolation · (1 − e) + extrapolation · e with e = 1 − ramp.
                        interpolation * ramp + extrapolation * (1.0 - ramp)
                    })
                    .collect()
            }
            RopeScaling::LongRope {
                short_factor,
                long_factor,
                ..
            } => {
                let factors = if self.uses_long_factors(len) {
                    long_factor
                } else {
                    short_factor
                };
                if factors.len() != half {
                    return Err(format!(
                        "longrope lists {} factors, but the rotary dimension {dim} needs {half}",
                        factors.len()
                    ));
                }
                (0..half).map(|i| 1.0 / (factors[i] * base(i))).collect()
            }
        };
        Ok(freqs.into_iter().map(|f| f as f32).collect())
    }
}

/// YaRN's `0.1 · mscale · ln(scale) + 1` (1 for scale ≤ 1).
pub fn yarn_mscale(scale: f64, mscale: f64) -> f64 {
    if scale <= 1.0 {
        1.0
    } else {
        0.1 * mscale * scale.ln() + 1.0
    }
}

/// The dimensions between which YaRN ramps from extrapolation to interpolation.
fn yarn_correction_range(fast: f64, slow: f64, dim: usize, base: f64, orig: f64, truncate: bool) -> (f64, f64) {
    let correction =
        |rotations: f64| (dim as f64 * (orig / (rotations * 2.0 * std::f64::consts::PI)).ln()) / (2.0 * base.ln());
    let (mut low, mut high) = (correction(fast), correction(slow));
    if truncate {
        low = low.floor();
        high = high.ceil();
    }
    (low.max(0.0), high.min(dim as f64 - 1.0))
}

/// transformers' `linear_ramp_factor`: 0 below `low`, 1 above `high`, linear between (in f32, as there).
fn yarn_ramp(i: f64, low: f64, high: f64) -> f64 {
    let high = if low == high { high + 0.001 } else { high };
    let ramp = ((i as f32 - low as f32) / (high as f32 - low as f32)).clamp(0.0, 1.0);
    ramp as f64
}

/// Llama 3's scaling of one frequency: kept for short wavelengths, divided by `factor` for long ones, smoothed
/// between.
fn llama3_frequency(f: f64, factor: f64, low: f64, high: f64, orig: f64) -> f64 {
    let low_wavelen = orig / low;
    let high_wavelen = orig / high;
    let wavelen = 2.0 * std::f64::consts::PI / f;
    if wavelen < high_wavelen {
        f
    } else if wavelen > low_wavelen {
        f / factor
    } else {
        let smooth = (orig / wavelen - low) / (high - low);
        (1.0 - smooth) * f / factor + smooth * f
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ctx() -> RopeContext {
        RopeContext {
            theta: 10000.0,
            partial_rotary_factor: None,
            max_position_embeddings: Some(4096.0),
            original_max_position_embeddings: None,
            original_overrides: false,
        }
    }

    #[test]
    fn proportional_turns_a_share_of_each_half_head_at_whole_head_exponents() {
        let d = json!({"rope_type": "proportional", "partial_rotary_factor": 0.25, "rope_theta": 100.0});
        let spec = RopeSpec::read(d.as_object(), &ctx(), "rope_parameters").unwrap();
        // The tables span the whole head: 16 frequencies for 32 dimensions, 4 of them turning.
        assert_eq!(spec.rotary_dim(32), 32);
        let f = spec.inv_freq(32, 48).unwrap();
        assert_eq!(f.len(), 16);
        for (i, &v) in f.iter().enumerate() {
            let want = if i < 4 {
                100f64.powf(-(2.0 * i as f64) / 32.0) as f32
            } else {
                0.0
            };
            assert_eq!(v, want, "frequency {i}");
        }
        let d = json!({"rope_type": "proportional", "rope_theta": 100.0, "beta_fast": 4.0});
        let e = RopeSpec::read(d.as_object(), &ctx(), "rope_parameters").unwrap_err();
        assert!(e.contains("beta_fast"), "{e}");
    }

    fn read(v: Value) -> Result<RopeSpec, String> {
        RopeSpec::read(v.as_object(), &ctx(), "rope_parameters")
    }

    #[test]
    fn llama3_keeps_high_frequencies_and_divides_low_ones() {
        let r = read(json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}))
        .unwrap();
        let f = r.inv_freq(16, 10).unwrap();
        assert_eq!(f[0], 1.0);
        let unscaled = 1.0 / 10000f64.powf(14.0 / 16.0);
        assert!((f[7] as f64 - unscaled / 8.0).abs() < 1e-9);
    }

    #[test]
    fn yarn_derives_its_attention_factor_and_ramps_between_its_bounds() {
        let r = read(json!({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 1024})).unwrap();
        assert!((r.attention_factor - (0.1 * 4f64.ln() + 1.0)).abs() < 1e-12);
        let f = r.inv_freq(64, 10).unwrap();
        assert_eq!(f[0], 1.0, "the fastest frequency extrapolates");
        let slowest = 1.0 / 10000f64.powf(62.0 / 64.0) / 4.0;
        assert!(
            (f[31] as f64 - slowest).abs() / slowest < 1e-6,
            "the slowest interpolates"
        );
    }

    #[test]
    fn longrope_switches_to_its_long_factors_past_the_original_context() {
        let r = RopeSpec::read(
            json!({"rope_type": "longrope", "short_factor": [1.0, 2.0], "long_factor": [3.0, 4.0]}).as_object(),
            &RopeContext {
                original_max_position_embeddings: Some(64.0),
                max_position_embeddings: Some(256.0),
                ..ctx()
            },
            "rope_scaling",
        )
        .unwrap();
        assert!((r.attention_factor - (1.0 + 4f64.ln() / 64f64.ln()).sqrt()).abs() < 1e-12);
        assert_eq!(r.inv_freq(4, 64).unwrap()[1], (1.0 / (2.0 * 100.0)) as f32);
        assert_eq!(r.inv_freq(4, 65).unwrap()[1], (1.0 / (4.0 * 100.0)) as f32);
    }

    #[test]
    fn partial_rotary_rotates_part_of_each_head() {
        let r = read(json!({"rope_type": "default", "partial_rotary_factor": 0.75})).unwrap();
        assert_eq!(r.rotary_dim(96), 72);
        assert_eq!(r.inv_freq(96, 1).unwrap().len(), 36);
    }

    #[test]
    fn unknown_types_and_keys_are_refused_by_name() {
        let e = read(json!({"rope_type": "dynamic", "factor": 2.0})).unwrap_err();
        assert!(e.contains("dynamic"), "{e}");
        let e = read(json!({"rope_type": "default", "wavelength_fudge": 3})).unwrap_err();
        assert!(e.contains("wavelength_fudge"), "{e}");
        let e = read(json!({"rope_type": "linear", "factor": 2.0, "low_freq_factor": 1.0})).unwrap_err();
        assert!(e.contains("low_freq_factor"), "{e}");
    }
}
