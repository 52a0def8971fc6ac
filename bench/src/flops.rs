//! A lower bound on the matmul work of one training step, per freeze configuration: what any implementation must
//! multiply, so a step-time ratio can be read against the ratio of work (e.g. "top 2 / full" cannot go below the
//! ratio of their FLOPs, whoever runs them). Counted: every forward matmul (projections, attention scores and
//! values over the full seq × seq square, a delta rule's state products, lm_head); the input gradients of every
//! layer above the lowest one with a trainable tensor (the same work as its forward matmuls, twice for the token
//! mixer's own products) and of lm_head when anything below it trains; one weight-gradient matmul per trainable
//! matrix. Left out, so the bound stays a bound: the input
//! gradients inside the lowest trainable layer, norms, elementwise ops and the optimizer. A mixture-of-experts
//! layer's expert matrices count for the share of tokens routed to each (top_k / count).

use freezetune_core::layout::ModelLayout;
use freezetune_core::plan::FreezePlan;
use freezetune_train::config::Mixer;
use freezetune_train::DecoderConfig;

/// Multiply-adds counted as two FLOPs.
pub fn step_flops(layout: &ModelLayout, plan: &FreezePlan, config: &DecoderConfig, batch: usize, seq: usize) -> f64 {
    let tokens = (batch * seq) as f64;
    // A 3-D tensor is a layer's experts stacked (experts × out × in): each expert one matrix.
    let matrix = |shape: &[u64]| -> f64 {
        match shape {
            [out, inp] => 2.0 * tokens * (*out as f64) * (*inp as f64),
            [experts, out, inp] => 2.0 * tokens * (*experts as f64) * (*out as f64) * (*inp as f64),
            _ => 0.0,
        }
    };
    // Per layer, the token mixer's own products: attention's scores and values over the square; a delta rule's
    // reads and writes of its state (q·S and k ⊗ v per position and head), and a Mamba 2 scan's likewise; a short
    // convolution's, too few to count.
    let mixing: Vec<f64> = config
        .layers
        .iter()
        .map(|l| match l.mixer {
            Mixer::Attention => 4.0 * (batch * config.num_heads * seq * seq * l.head_dim) as f64,
            Mixer::GatedDeltaNet(s) => 4.0 * tokens * (s.value_heads * s.key_dim * s.value_dim) as f64,
            Mixer::ShortConv { .. } => 0.0,
            // The state's read and write per position and head (head dim × state each).
            Mixer::Mamba2(m) => 4.0 * tokens * (m.heads * m.head_dim * m.state) as f64,
        })
        .collect();
    // An expert's matrices multiply only the rows routed to it: on average top_k / count of the tokens.
    let share = |layer: usize, name: &str| match config.layers.get(layer).and_then(|l| l.experts) {
        Some(e) if freezetune_core::quant::is_stacked_experts(name) || name.contains(".experts.") => {
            e.top_k as f64 / e.count as f64
        }
        _ => 1.0,
    };
    let work = |l: &freezetune_core::layout::LayerInfo, t: &freezetune_core::layout::TensorInfo| {
        matrix(&t.shape) * share(l.id, &t.name)
    };
    let layer_forward: Vec<f64> = layout
        .layers
        .iter()
        .zip(&mixing)
        .map(|(l, mix)| l.tensors().map(|t| work(l, t)).sum::<f64>() + mix)
        .collect();
    let head = 2.0 * tokens * (config.hidden_size * config.vocab_size) as f64;
    let trainable_in_layer = |l: &freezetune_core::layout::LayerInfo| l.tensors().any(|t| plan.is_trainable(&t.name));
    let lowest = layout.layers.iter().position(trainable_in_layer);
    let weight_grads: f64 = layout
        .layers
        .iter()
        .flat_map(|l| l.tensors().map(move |t| (l, t)))
        .filter(|(_, t)| plan.is_trainable(&t.name))
        .map(|(l, t)| work(l, t))
        .sum();
    let head_trainable = plan.is_trainable("lm_head.weight")
        || (config.tie_word_embeddings && plan.trainable.iter().any(|n| n.ends_with("embed_tokens.weight")));
    let mut total = layer_forward.iter().sum::<f64>() + head;
    if let Some(lowest) = lowest {
        total += head; // the gradient of the last hidden state
        total += layer_forward[lowest + 1..]
            .iter()
            .zip(&mixing[lowest + 1..])
            .map(|(f, mix)| f + mix)
            .sum::<f64>();
    }
    total += weight_grads + if head_trainable { head } else { 0.0 };
    total
}
