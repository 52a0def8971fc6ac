//! Mutations that keep an input close to a real file: bytes (integers at aligned offsets set to edge values,
//! flips, splices, truncation), JSON (a value anywhere in the tree replaced by an edge case, keys removed or
//! added, arrays grown or emptied) and template text (real Jinja fragments spliced in).

use serde_json::{json, Value};

/// xorshift64*: small, fast, reproducible from its seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

const EDGE_U64: [u64; 10] = [0, 1, 2, 3, 7, 32, 255, 1 << 31, u32::MAX as u64, u64::MAX];

/// 1 to 4 byte-level edits, biased towards the first `hot` bytes (a header).
pub fn bytes(rng: &mut Rng, input: &[u8], hot: usize) -> Vec<u8> {
    let mut b = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        if b.is_empty() {
            b.push(rng.next() as u8);
            continue;
        }
        let span = if rng.chance(80) { hot.min(b.len()) } else { b.len() };
        let at = rng.below(span);
        match rng.below(7) {
            0 => b[at] ^= 1 << rng.below(8),
            1 => b[at] = rng.next() as u8,
            2 | 3 => {
                // An integer field: 4 or 8 bytes at an aligned offset set to an edge value.
                let width = if rng.chance(50) { 4 } else { 8 };
                let at = at - at % width;
                let v = EDGE_U64[rng.below(EDGE_U64.len())].to_le_bytes();
                let end = (at + width).min(b.len());
                b[at..end].copy_from_slice(&v[..end - at]);
            }
            4 => b.truncate(at),
            5 => {
                let len = rng.below(64).min(b.len() - at);
                let chunk = b[at..at + len].to_vec();
                let to = rng.below(b.len());
                b.splice(to..to, chunk);
            }
            _ => {
                let len = rng.below(16).min(b.len() - at);
                b.drain(at..at + len);
            }
        }
    }
    b
}

fn edge_value(rng: &mut Rng) -> Value {
    match rng.below(16) {
        0 => json!(0),
        1 => json!(-1),
        2 => json!(1),
        3 => json!(u64::MAX),
        4 => json!(1_000_000_000u64),
        5 => json!(1e308),
        6 => json!(0.5),
        7 => Value::Null,
        8 => json!(true),
        9 => json!(""),
        10 => json!("x".repeat(rng.below(300))),
        11 => json!([]),
        12 => json!({}),
        13 => json!([1, 0, "a", null]),
        14 => json!(i64::MIN),
        _ => json!(rng.below(70_000)),
    }
}

/// The number of values in the tree (a node to pick uniformly).
fn count(v: &Value) -> usize {
    1 + match v {
        Value::Array(a) => a.iter().map(count).sum(),
        Value::Object(o) => o.values().map(count).sum(),
        _ => 0,
    }
}

/// Applies `f` to the `n`-th value in pre-order; false when the tree has fewer.
fn edit_nth(v: &mut Value, n: &mut usize, f: &mut dyn FnMut(&mut Value)) -> bool {
    if *n == 0 {
        f(v);
        return true;
    }
    *n -= 1;
    match v {
        Value::Array(a) => a.iter_mut().any(|x| edit_nth(x, n, f)),
        Value::Object(o) => o.values_mut().any(|x| edit_nth(x, n, f)),
        _ => false,
    }
}

const KEYS: [&str; 12] = [
    "num_hidden_layers",
    "hidden_size",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "vocab_size",
    "sliding_window",
    "layer_types",
    "rope_parameters",
    "text_config",
    "model_type",
    "no_rope_layers",
];

/// 1 to 4 structural edits of a JSON document.
pub fn json(rng: &mut Rng, input: &Value) -> Value {
    let mut v = input.clone();
    for _ in 0..1 + rng.below(4) {
        let mut n = rng.below(count(&v));
        let mut edit = |node: &mut Value| match (rng.below(6), node) {
            (0, Value::Object(o)) if !o.is_empty() => {
                let key = o.keys().nth(rng.below(o.len())).cloned().expect("non-empty");
                o.remove(&key);
            }
            (1, Value::Object(o)) => {
                o.insert(KEYS[rng.below(KEYS.len())].into(), edge_value(rng));
            }
            (2, Value::Array(a)) => {
                if let Some(x) = a.first().cloned() {
                    let times = rng.below(200);
                    a.extend(std::iter::repeat_n(x, times));
                }
            }
            (3, Value::Array(a)) => a.truncate(rng.below(a.len() + 1)),
            (_, node) => *node = edge_value(rng),
        };
        edit_nth(&mut v, &mut n, &mut edit);
    }
    v
}

const FRAGMENTS: [&str; 16] = [
    "{% for m in messages %}",
    "{% endfor %}",
    "{{ m['content'] }}",
    "{{ messages[0]['role'] }}",
    "{% if add_generation_prompt %}",
    "{% endif %}",
    "{{ raise_exception('no') }}",
    "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "{{ messages|tojson }}",
    "{% set x = messages * 100 %}",
    "{{ bos_token * 1000 }}",
    "{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}",
    "{{",
    "}}",
    "{%",
    "{{ (messages|length) ** 40 }}",
];

/// 1 to 3 splices of Jinja fragments into a template, or deletions.
pub fn template(rng: &mut Rng, input: &str) -> String {
    let mut t = input.to_string();
    for _ in 0..1 + rng.below(3) {
        let mut at = rng.below(t.len() + 1);
        while !t.is_char_boundary(at) {
            at -= 1;
        }
        if rng.chance(70) {
            t.insert_str(at, FRAGMENTS[rng.below(FRAGMENTS.len())]);
        } else {
            let mut end = (at + rng.below(32)).min(t.len());
            while !t.is_char_boundary(end) {
                end -= 1;
            }
            t.replace_range(at..end, "");
        }
    }
    t
}
