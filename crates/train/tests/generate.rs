//! Generation: the KV-cached path gives the same tokens as recomputing the whole sequence each step.

use candle_core::Device;
use freezetune_train::generate::{GenerateOptions, Generator};
use freezetune_train::Batch;
use std::path::PathBuf;

#[test]
fn cached_greedy_generation_equals_full_recomputation() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/models/qwen2");
    let g = Generator::load(&dir, &Device::Cpu).unwrap();
    let prompt = g.prompt_ids("Hello there", true).unwrap();
    assert_eq!(prompt[0], 1, "the chat template starts with <|im_start|>");
    let o = GenerateOptions {
        max_new_tokens: 12,
        temperature: 0.0,
        seed: 1,
        chat: true,
    };
    let cached = g.generate_ids(&prompt, &o).unwrap();
    let mut seq = prompt.clone();
    let mut slow = Vec::new();
    for _ in 0..cached.len() {
        let logits = g
            .model()
            .forward(&Batch {
                input_ids: vec![seq.clone()],
                lengths: vec![seq.len()],
            })
            .unwrap();
        let last: Vec<f32> = logits.get(0).unwrap().get(seq.len() - 1).unwrap().to_vec1().unwrap();
        let next = last.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0 as u32;
        slow.push(next);
        seq.push(next);
    }
    assert!(!cached.is_empty());
    assert_eq!(cached, slow);
    let sampled = GenerateOptions {
        temperature: 1.0,
        seed: 7,
        ..o.clone()
    };
    assert_eq!(
        g.generate_ids(&prompt, &sampled).unwrap(),
        g.generate_ids(&prompt, &sampled).unwrap(),
        "seeded sampling repeats"
    );
}
