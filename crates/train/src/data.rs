//! Training data. Each example is token ids plus labels aligned with them as in transformers (`-100` = not learned;
//! the model shifts them). This build reads the `tokenized` format (JSONL or a JSON array of
//! `{"input_ids": [...], "labels": [...]}`, labels optional = learn every token); the formats that need a tokenizer
//! and chat templates are refused with a clear message.

use crate::error::{Result, TrainError};
use freezetune_core::run_config::DataFormat;
use serde_json::Value;
use std::path::Path;

#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub input_ids: Vec<u32>,
    pub labels: Vec<i64>,
}

impl Example {
    pub fn learned_tokens(&self) -> usize {
        // Position t predicts label t+1: the first label is never a target.
        self.labels.iter().skip(1).filter(|l| **l >= 0).count()
    }
}

/// Examples read from a file, with the count of what was skipped and why.
#[derive(Debug, Default)]
pub struct Dataset {
    pub examples: Vec<Example>,
    pub truncated: usize,
    pub skipped_no_targets: usize,
}

/// Reads `path` as `format`, truncating to `cutoff_len` tokens.
pub fn load(path: &Path, format: DataFormat, cutoff_len: usize, vocab_size: usize) -> Result<Dataset> {
    let text = std::fs::read_to_string(path).map_err(|e| TrainError::Io {
        path: path.to_path_buf(),
        source: e,
    })?;
    let records = records(path, &text)?;
    let format = match format {
        DataFormat::Auto => detect(path, &records)?,
        f => f,
    };
    if format != DataFormat::Tokenized {
        return Err(TrainError::Data {
            file: path.to_path_buf(),
            line: 1,
            reason: format!(
                "the {format:?} format needs the tokenizer and chat templates, which this build does not have yet; \
                 give pre-tokenized records ({{\"input_ids\": [...], \"labels\": [...]}}) with format = \"tokenized\""
            ),
        });
    }
    let mut out = Dataset::default();
    for (line, rec) in records {
        let bad = |reason: String| TrainError::Data {
            file: path.to_path_buf(),
            line,
            reason,
        };
        let ids = int_list(&rec, "input_ids")
            .map_err(&bad)?
            .ok_or_else(|| bad("no \"input_ids\" list".into()))?;
        let labels = int_list(&rec, "labels").map_err(&bad)?.unwrap_or_else(|| ids.clone());
        if labels.len() != ids.len() {
            return Err(bad(format!(
                "\"labels\" has {} entries but \"input_ids\" has {}",
                labels.len(),
                ids.len()
            )));
        }
        if let Some(id) = ids.iter().find(|&&i| i < 0 || i as usize >= vocab_size) {
            return Err(bad(format!(
                "token id {id} is outside the model's vocabulary (0-{})",
                vocab_size - 1
            )));
        }
        if let Some(l) = labels
            .iter()
            .find(|&&l| l != -100 && (l < 0 || l as usize >= vocab_size))
        {
            return Err(bad(format!(
                "label {l} is neither -100 nor a token id of the vocabulary"
            )));
        }
        let mut ex = Example {
            input_ids: ids.iter().map(|&i| i as u32).collect(),
            labels,
        };
        if ex.input_ids.len() > cutoff_len {
            ex.input_ids.truncate(cutoff_len);
            ex.labels.truncate(cutoff_len);
            out.truncated += 1;
        }
        if ex.learned_tokens() == 0 {
            out.skipped_no_targets += 1;
            continue;
        }
        out.examples.push(ex);
    }
    if out.examples.is_empty() {
        return Err(TrainError::Data {
            file: path.to_path_buf(),
            line: 1,
            reason: "no example has a token to learn".into(),
        });
    }
    Ok(out)
}

/// `(line number, record)`: a JSON array, or one JSON object per line.
fn records(path: &Path, text: &str) -> Result<Vec<(usize, Value)>> {
    if text.trim_start().starts_with('[') {
        let arr: Vec<Value> = serde_json::from_str(text).map_err(|e| TrainError::Data {
            file: path.to_path_buf(),
            line: e.line(),
            reason: e.to_string(),
        })?;
        return Ok(arr.into_iter().enumerate().map(|(i, v)| (i + 1, v)).collect());
    }
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l)
                .map(|v| (i + 1, v))
                .map_err(|e| TrainError::Data {
                    file: path.to_path_buf(),
                    line: i + 1,
                    reason: format!("not valid JSON: {e}"),
                })
        })
        .collect()
}

fn detect(path: &Path, records: &[(usize, Value)]) -> Result<DataFormat> {
    let Some((line, first)) = records.first() else {
        return Err(TrainError::Data {
            file: path.to_path_buf(),
            line: 1,
            reason: "the file holds no records".into(),
        });
    };
    let has = |k: &str| first.get(k).is_some();
    Ok(if has("input_ids") {
        DataFormat::Tokenized
    } else if has("instruction") {
        DataFormat::Alpaca
    } else if has("conversations") {
        DataFormat::Sharegpt
    } else if has("messages") {
        DataFormat::Messages
    } else if has("text") {
        DataFormat::Text
    } else {
        return Err(TrainError::Data {
            file: path.to_path_buf(),
            line: *line,
            reason: "cannot tell the format: expected input_ids, instruction, conversations, messages or text".into(),
        });
    })
}

fn int_list(rec: &Value, key: &str) -> std::result::Result<Option<Vec<i64>>, String> {
    match rec.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| v.as_i64().ok_or_else(|| format!("\"{key}\" holds {v}, not an integer")))
            .collect::<std::result::Result<_, _>>()
            .map(Some),
        Some(other) => Err(format!("\"{key}\" is {other}, not a list")),
    }
}

/// Splits off the last `fraction` of the examples (after a seeded shuffle) for evaluation.
pub fn split_eval(mut examples: Vec<Example>, fraction: f64, seed: u64) -> (Vec<Example>, Vec<Example>) {
    if fraction <= 0.0 {
        return (examples, Vec::new());
    }
    crate::schedule::shuffle(&mut examples, seed ^ 0xE7A1);
    let n_eval =
        ((examples.len() as f64 * fraction).round() as usize).clamp(1, examples.len().saturating_sub(1).max(1));
    let eval = examples.split_off(examples.len() - n_eval);
    (examples, eval)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.jsonl");
        std::fs::write(&p, text).unwrap();
        (dir, p)
    }

    #[test]
    fn tokenized_records_with_errors_naming_the_line() {
        let (_d, p) = write("{\"input_ids\": [1,2,3], \"labels\": [-100,2,3]}\n\n{\"input_ids\": [4,5]}\n");
        let ds = load(&p, DataFormat::Auto, 8, 10).unwrap();
        assert_eq!(ds.examples.len(), 2);
        assert_eq!(ds.examples[1].labels, vec![4, 5]);
        let (_d, p) = write("{\"input_ids\": [1,2,3]}\n{\"input_ids\": [1,99]}\n");
        let e = load(&p, DataFormat::Tokenized, 8, 10).unwrap_err().to_string();
        assert!(e.contains("d.jsonl:2") && e.contains("99"), "{e}");
        let (_d, p) = write("{\"input_ids\": [1,2], \"labels\": [1]}\n");
        assert!(load(&p, DataFormat::Tokenized, 8, 10)
            .unwrap_err()
            .to_string()
            .contains("d.jsonl:1"));
        let (_d, p) = write("{\"input_ids\": [1,2,3,4,5]}\n{\"input_ids\": [1,2], \"labels\": [-100,-100]}\n");
        let ds = load(&p, DataFormat::Tokenized, 3, 10).unwrap();
        assert_eq!((ds.examples.len(), ds.truncated, ds.skipped_no_targets), (1, 1, 1));
        let (_d, p) = write("{\"instruction\": \"hi\", \"output\": \"yo\"}\n");
        assert!(load(&p, DataFormat::Auto, 8, 10)
            .unwrap_err()
            .to_string()
            .contains("Alpaca format needs the tokenizer"));
    }
}
