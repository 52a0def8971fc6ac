//! Gemma 4's layers that reuse an earlier layer's keys and values, and its per-layer embeddings, read from
//! config.json (the decoder in model.rs and per_layer.rs applies them).
//!
//! The last `num_kv_shared_layers` layers (when at least one layer comes before them) compute only queries: each
//! attends over the keys and values of the last earlier layer of its own kind (sliding or full), as that layer
//! rotated and normalised them, and with `use_double_wide_mlp` its MLP is twice as wide.

use serde_json::Value;

/// Gemma 4's per-layer embeddings: `width` values per layer and token (`hidden_size_per_layer_input`), from a
/// table of `vocab` rows (`vocab_size_per_layer_input`) and a projection of the token embeddings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PerLayerInputs {
    pub width: usize,
    pub vocab: usize,
}

/// Per layer, the layer whose keys and values it reuses (None: its own), and whether its MLP is doubled.
pub(crate) fn kv_sources(
    raw: &Value,
    windows: &[Option<usize>],
) -> std::result::Result<(Vec<Option<usize>>, Vec<bool>), String> {
    let layers = windows.len();
    let shared = match &raw["num_kv_shared_layers"] {
        Value::Null => 0,
        v => v
            .as_u64()
            .filter(|&n| n as usize <= layers)
            .ok_or_else(|| format!("`num_kv_shared_layers` is {v}; it must be an integer from 0 to {layers}"))?
            as usize,
    };
    let first = layers - shared;
    // transformers shares only when some layer comes first (`layer_idx >= first > 0`).
    if shared == 0 || first == 0 {
        return Ok((vec![None; layers], vec![false; layers]));
    }
    let double = match &raw["use_double_wide_mlp"] {
        Value::Null => false,
        v => v
            .as_bool()
            .ok_or_else(|| format!("`use_double_wide_mlp` must be true or false, not {v}"))?,
    };
    let sliding = |i: usize| windows[i].is_some();
    let sources = (0..layers)
        .map(|i| {
            if i < first {
                return Ok(None);
            }
            (0..first)
                .rev()
                .find(|&j| sliding(j) == sliding(i))
                .map(Some)
                .ok_or_else(|| {
                    format!(
                    "layer {i} reuses the keys and values of an earlier {} layer (`num_kv_shared_layers` {shared}), \
                     but none of the first {first} layers is one: transformers fails on this config. Lower \
                     `num_kv_shared_layers`, or make one of the first {first} layers of that kind in `layer_types`",
                    if sliding(i) { "sliding" } else { "full-attention" }
                )
                })
        })
        .collect::<std::result::Result<Vec<_>, String>>()?;
    let doubled = (0..layers).map(|i| double && i >= first).collect();
    Ok((sources, doubled))
}

/// The per-layer embeddings config.json asks for (`hidden_size_per_layer_input` not 0 or null).
pub(crate) fn per_layer_inputs(raw: &Value) -> std::result::Result<Option<PerLayerInputs>, String> {
    let size = |k: &str| match &raw[k] {
        Value::Null => Ok(None),
        v => v
            .as_u64()
            .filter(|&n| n <= 1 << 20)
            .map(|n| Some(n as usize))
            .ok_or_else(|| format!("`{k}` is {v}; it must be an integer from 0 to 1048576")),
    };
    let Some(width) = size("hidden_size_per_layer_input")?.filter(|&w| w > 0) else {
        return Ok(None);
    };
    let vocab = size("vocab_size_per_layer_input")?
        .filter(|&v| v > 0)
        .ok_or("`vocab_size_per_layer_input` must be a positive integer: the per-layer embeddings' rows")?;
    Ok(Some(PerLayerInputs { width, vocab }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn shared_layers_read_the_last_earlier_layer_of_their_kind() {
        let windows = [Some(8), None, Some(8), None, Some(8), None];
        let raw = json!({"num_kv_shared_layers": 2, "use_double_wide_mlp": true});
        let (sources, doubled) = kv_sources(&raw, &windows).unwrap();
        assert_eq!(sources, [None, None, None, None, Some(2), Some(3)]);
        assert_eq!(doubled, [false, false, false, false, true, true]);
        // Every layer shared: transformers shares none.
        let (sources, _) = kv_sources(&json!({"num_kv_shared_layers": 6}), &windows).unwrap();
        assert!(sources.iter().all(Option::is_none));
        // A shared full layer with no full layer before the shared ones.
        let windows = [Some(8), Some(8), None];
        let e = kv_sources(&json!({"num_kv_shared_layers": 1}), &windows).unwrap_err();
        assert!(e.contains("layer 2") && e.contains("full-attention"), "{e}");
        let e = kv_sources(&json!({"num_kv_shared_layers": 7}), &windows).unwrap_err();
        assert!(e.contains("num_kv_shared_layers"), "{e}");
    }
}
