//! Training data. Each example is token ids plus labels aligned with them as in transformers (`-100` = not learned;
//! the model shifts them). Formats: `tokenized` (`{"input_ids", "labels"}`), `text` (`{"text"}`, every token
//! learned, EOS appended), and the chat formats `alpaca` (instruction / input / output, optional system / history),
//! `sharegpt` (`conversations` of from / value) and `messages` (OpenAI role / content), rendered with the model's
//! chat template so that only the replies are learned unless `train_on_prompt`. The rows come from freezetune-data:
//! a JSON, JSON Lines, CSV/TSV or Parquet file, or a folder of them.

use crate::error::{Result, TrainError};
use crate::template::ChatFormatter;
use crate::DecoderConfig;
use freezetune_core::data_spec::{Formatting, Mix};
use freezetune_core::run_config::{DataFormat, RunConfig};
use freezetune_data::messages::{alpaca, alternates, openai, sharegpt};
use freezetune_data::Row;
use serde_json::Value;
use std::path::Path;

/// How to read a data file.
pub struct DataOptions<'a> {
    pub format: DataFormat,
    pub cutoff_len: usize,
    pub vocab_size: usize,
    pub train_on_prompt: bool,
    /// Needed by every format but `tokenized`.
    pub formatter: Option<&'a ChatFormatter>,
}

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
    /// Conversations whose turns do not alternate user / assistant ([`alternates`]), left out as LLaMA-Factory
    /// leaves them out.
    pub skipped_broken_turns: usize,
}

/// Reads `path`, truncating examples to `cutoff_len` tokens.
pub fn load(path: &Path, o: &DataOptions) -> Result<Dataset> {
    let records = read_records(path, None)?;
    let format = resolve_format(path, &records, o.format)?;
    examples(path, records.into_iter().map(|r| (r, format)), o)
}

/// A run's training data: `[data] train`, or its `[[data.datasets]]` each mapped to the trainer's records and
/// mixed (freezetune-data).
pub fn load_run(config: &RunConfig, o: &DataOptions) -> Result<Dataset> {
    if config.data.datasets.is_empty() {
        return load(&config.data.train, o);
    }
    let rows = mixed_rows(config)?;
    let first = config.data.datasets[0].label();
    examples(Path::new(&first), rows.into_iter(), o)
}

/// The run's `[[data.eval_datasets]]`, each with its mapping, one after the other.
pub fn load_eval_datasets(config: &RunConfig, o: &DataOptions) -> Result<Dataset> {
    let d = &config.data;
    let rows = freezetune_data::load_mixed(&d.eval_datasets, Mix::Concat, config.training.seed).map_err(data_error)?;
    let first = d.eval_datasets.first().map(|s| s.label()).unwrap_or_default();
    let rows = rows.into_iter().map(|(r, f)| (r, format_of(f)));
    examples(Path::new(&first), rows, o)
}

/// Every dataset's rows, mapped and mixed, each with the format its records now have.
fn mixed_rows(config: &RunConfig) -> Result<Vec<(Row, DataFormat)>> {
    let d = &config.data;
    let rows = freezetune_data::load_mixed(&d.datasets, d.mix, config.training.seed).map_err(data_error)?;
    Ok(rows.into_iter().map(|(r, f)| (r, format_of(f))).collect())
}

fn format_of(f: Formatting) -> DataFormat {
    match f {
        Formatting::Alpaca => DataFormat::Alpaca,
        Formatting::Sharegpt => DataFormat::Sharegpt,
        Formatting::Text => DataFormat::Text,
        Formatting::Tokenized => DataFormat::Tokenized,
    }
}

/// Rows as examples, truncated to `cutoff_len`; rows with nothing to learn are counted and left out.
fn examples(source: &Path, rows: impl Iterator<Item = (Row, DataFormat)>, o: &DataOptions) -> Result<Dataset> {
    let mut out = Dataset::default();
    for (row, format) in rows {
        let Some((_, mut ex)) = convert(&row.file, row.line, &row.value, format, o)? else {
            if out.skipped_broken_turns == 0 {
                tracing::warn!(
                    "{}:{}: the conversation's turns do not alternate user / assistant (after an optional system \
                     turn, from the user, ending with the assistant); it and any others like it are left out, as \
                     LLaMA-Factory leaves them out",
                    row.file.display(),
                    row.line
                );
            }
            out.skipped_broken_turns += 1;
            continue;
        };
        if ex.input_ids.len() > o.cutoff_len {
            ex.input_ids.truncate(o.cutoff_len);
            ex.labels.truncate(o.cutoff_len);
            out.truncated += 1;
        }
        if ex.learned_tokens() == 0 {
            out.skipped_no_targets += 1;
            continue;
        }
        out.examples.push(ex);
    }
    if out.examples.is_empty() {
        let broken = match out.skipped_broken_turns {
            0 => String::new(),
            n => format!(" ({n} conversation(s) left out: their turns do not alternate user / assistant)"),
        };
        return Err(TrainError::Data {
            file: source.to_path_buf(),
            line: 1,
            reason: format!("no example has a token to learn{broken}"),
        });
    }
    Ok(out)
}

/// One example as `data preview` shows it: the rendered text, and the same text with the learned parts marked.
#[derive(Debug, Clone, serde::Serialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct PreviewItem {
    pub line: usize,
    pub text: String,
    pub tokens: usize,
    pub learned_tokens: usize,
    pub truncated: bool,
    /// The tokens after truncation, learned runs wrapped in `[[` `]]`.
    pub marked: String,
}

/// The first `n` examples of a run's training data, read with the run's model tokenizer and chat template.
pub fn preview_run(config: &RunConfig, n: usize) -> Result<(DataFormat, Vec<PreviewItem>)> {
    let model = &config.model.path;
    let formatter = if model.join("tokenizer.json").is_file() {
        Some(ChatFormatter::load(model)?)
    } else {
        None
    };
    let options = DataOptions {
        format: config.data.format,
        cutoff_len: config.data.cutoff_len,
        vocab_size: DecoderConfig::read(model).map(|c| c.vocab_size).unwrap_or(usize::MAX),
        train_on_prompt: config.data.train_on_prompt,
        formatter: formatter.as_ref(),
    };
    if config.data.datasets.is_empty() {
        return preview(&config.data.train, &options, n);
    }
    // The mix as training draws it. No dataset gives more than n of the first n rows, and the draws do not depend
    // on the limits until a dataset runs out: reading n rows of each shows the same first rows.
    let mut capped = config.clone();
    for d in &mut capped.data.datasets {
        d.limit = Some(d.limit.map_or(n, |l| l.min(n)).max(1));
    }
    let rows: Vec<(Row, DataFormat)> = mixed_rows(&capped)?.into_iter().take(n).collect();
    let format = rows.first().map_or(DataFormat::Auto, |(_, f)| *f);
    Ok((format, preview_rows(&rows, &options)?))
}

/// The first `n` examples of `path`, rendered, tokenized and masked exactly as training will see them.
pub fn preview(path: &Path, o: &DataOptions, n: usize) -> Result<(DataFormat, Vec<PreviewItem>)> {
    // Only the rows shown are read: a multi-GB file previews at once.
    let records = read_records(path, Some(n))?;
    let format = resolve_format(path, &records, o.format)?;
    let rows: Vec<(Row, DataFormat)> = records.into_iter().map(|r| (r, format)).collect();
    Ok((format, preview_rows(&rows, o)?))
}

/// Rows rendered, tokenized and masked as training sees them, learned runs marked.
fn preview_rows(rows: &[(Row, DataFormat)], o: &DataOptions) -> Result<Vec<PreviewItem>> {
    let mut items = Vec::new();
    for (row, format) in rows {
        // A conversation training leaves out is left out here too.
        let Some((text, ex)) = convert(&row.file, row.line, &row.value, *format, o)? else {
            continue;
        };
        let line = &row.line;
        let truncated = ex.input_ids.len() > o.cutoff_len;
        let keep = ex.input_ids.len().min(o.cutoff_len);
        let mut marked = String::new();
        let mut i = 0;
        while i < keep {
            let learned = ex.labels[i] >= 0;
            let mut j = i;
            while j < keep && (ex.labels[j] >= 0) == learned {
                j += 1;
            }
            let piece = match o.formatter {
                Some(f) => f.decode(&ex.input_ids[i..j]),
                None => format!("{:?}", &ex.input_ids[i..j]),
            };
            if learned {
                marked.push_str(&format!("[[{piece}]]"));
            } else {
                marked.push_str(&piece);
            }
            i = j;
        }
        let learned_tokens = ex.labels[..keep].iter().filter(|l| **l >= 0).count();
        items.push(PreviewItem {
            line: *line,
            text,
            tokens: ex.input_ids.len(),
            learned_tokens,
            truncated,
            marked,
        });
    }
    Ok(items)
}

/// The rows of a data file or folder (freezetune-data: JSON, JSON Lines, CSV/TSV, Parquet), all or the first
/// `limit`.
fn read_records(path: &Path, limit: Option<usize>) -> Result<Vec<Row>> {
    let rows = freezetune_data::open(path).map_err(data_error)?;
    rows.take(limit.unwrap_or(usize::MAX))
        .collect::<freezetune_data::Result<Vec<Row>>>()
        .map_err(data_error)
}

fn data_error(e: freezetune_data::DataError) -> TrainError {
    match e {
        freezetune_data::DataError::Io { path, source } => TrainError::Io { path, source },
        freezetune_data::DataError::Bad { file, line, reason } => TrainError::Data { file, line, reason },
    }
}

fn resolve_format(path: &Path, records: &[Row], format: DataFormat) -> Result<DataFormat> {
    match format {
        DataFormat::Auto => detect(path, records),
        f => Ok(f),
    }
}

/// One record as (rendered text, example); None for a conversation whose turns do not [`alternates`].
fn convert(
    path: &Path,
    line: usize,
    rec: &Value,
    format: DataFormat,
    o: &DataOptions,
) -> Result<Option<(String, Example)>> {
    let bad = |reason: String| TrainError::Data {
        file: path.to_path_buf(),
        line,
        reason,
    };
    if format == DataFormat::Tokenized {
        let ids = int_list(rec, "input_ids")
            .map_err(&bad)?
            .ok_or_else(|| bad("no \"input_ids\" list".into()))?;
        let labels = int_list(rec, "labels").map_err(&bad)?.unwrap_or_else(|| ids.clone());
        if labels.len() != ids.len() {
            return Err(bad(format!(
                "\"labels\" has {} entries but \"input_ids\" has {}",
                labels.len(),
                ids.len()
            )));
        }
        if let Some(id) = ids.iter().find(|&&i| i < 0 || i as usize >= o.vocab_size) {
            return Err(bad(format!(
                "token id {id} is outside the model's vocabulary (0-{})",
                o.vocab_size - 1
            )));
        }
        if let Some(l) = labels
            .iter()
            .find(|&&l| l != -100 && (l < 0 || l as usize >= o.vocab_size))
        {
            return Err(bad(format!(
                "label {l} is neither -100 nor a token id of the vocabulary"
            )));
        }
        let text = format!("{ids:?}");
        return Ok(Some((
            text,
            Example {
                input_ids: ids.iter().map(|&i| i as u32).collect(),
                labels,
            },
        )));
    }
    let f = o
        .formatter
        .ok_or_else(|| bad(format!("the {format:?} format needs the model's tokenizer.json")))?;
    if format == DataFormat::Text {
        let text = rec["text"]
            .as_str()
            .ok_or_else(|| bad("\"text\" is missing or not a string".into()))?;
        let (mut ids, _) = f.encode(text)?;
        ids.extend(f.eos_id);
        let labels = ids.iter().map(|&i| i as i64).collect();
        return Ok(Some((text.to_string(), Example { input_ids: ids, labels })));
    }
    let messages = match format {
        DataFormat::Alpaca => alpaca(rec).map_err(&bad)?,
        DataFormat::Sharegpt => sharegpt(rec).map_err(&bad)?,
        _ => openai(rec).map_err(&bad)?,
    };
    if !alternates(&messages) {
        return Ok(None);
    }
    let (text, ids, labels) = f
        .conversation(&messages, o.train_on_prompt)
        .map_err(|e| bad(e.to_string()))?;
    Ok(Some((text, Example { input_ids: ids, labels })))
}

fn detect(path: &Path, records: &[Row]) -> Result<DataFormat> {
    let Some(Row { line, value: first, .. }) = records.first() else {
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

    fn opts(format: DataFormat, cutoff_len: usize, vocab_size: usize) -> DataOptions<'static> {
        DataOptions {
            format,
            cutoff_len,
            vocab_size,
            train_on_prompt: false,
            formatter: None,
        }
    }

    fn load_as(p: &Path, format: DataFormat, cutoff_len: usize, vocab_size: usize) -> Result<Dataset> {
        super::load(p, &opts(format, cutoff_len, vocab_size))
    }

    #[test]
    fn tokenized_records_with_errors_naming_the_line() {
        let (_d, p) = write("{\"input_ids\": [1,2,3], \"labels\": [-100,2,3]}\n\n{\"input_ids\": [4,5]}\n");
        let ds = load_as(&p, DataFormat::Auto, 8, 10).unwrap();
        assert_eq!(ds.examples.len(), 2);
        assert_eq!(ds.examples[1].labels, vec![4, 5]);
        let (_d, p) = write("{\"input_ids\": [1,2,3]}\n{\"input_ids\": [1,99]}\n");
        let e = load_as(&p, DataFormat::Tokenized, 8, 10).unwrap_err().to_string();
        assert!(e.contains("d.jsonl:2") && e.contains("99"), "{e}");
        let (_d, p) = write("{\"input_ids\": [1,2], \"labels\": [1]}\n");
        assert!(load_as(&p, DataFormat::Tokenized, 8, 10)
            .unwrap_err()
            .to_string()
            .contains("d.jsonl:1"));
        let (_d, p) = write("{\"input_ids\": [1,2,3,4,5]}\n{\"input_ids\": [1,2], \"labels\": [-100,-100]}\n");
        let ds = load_as(&p, DataFormat::Tokenized, 3, 10).unwrap();
        assert_eq!((ds.examples.len(), ds.truncated, ds.skipped_no_targets), (1, 1, 1));
        let (_d, p) = write("{\"instruction\": \"hi\", \"output\": \"yo\"}\n");
        assert!(load_as(&p, DataFormat::Auto, 8, 10)
            .unwrap_err()
            .to_string()
            .contains("Alpaca format needs the model's tokenizer"));
    }

    /// Auto-detected chat records with the reference tokenizer, 256 tokens, replies learned.
    fn chat_options(f: &ChatFormatter) -> DataOptions<'_> {
        DataOptions {
            format: DataFormat::Auto,
            cutoff_len: 256,
            vocab_size: 512,
            train_on_prompt: false,
            formatter: Some(f),
        }
    }

    fn formatter() -> ChatFormatter {
        ChatFormatter::load(
            &std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/models/llama"),
        )
        .unwrap()
    }

    #[test]
    fn conversations_whose_turns_do_not_alternate_are_left_out_and_counted() {
        let f = formatter();
        let o = chat_options(&f);
        let turn = |from: &str| format!(r#"{{"from": "{from}", "value": "{from} says"}}"#);
        let row = |turns: &[&str]| {
            let turns: Vec<String> = turns.iter().map(|t| turn(t)).collect();
            format!(r#"{{"conversations": [{}]}}"#, turns.join(", "))
        };
        let rows = [
            row(&["human", "gpt"]),
            row(&["system", "human", "gpt", "human", "gpt"]),
            row(&["human", "human", "gpt"]),
            row(&["gpt", "human"]),
            row(&["human"]),
            row(&["human", "gpt", "human"]),
        ];
        let (_d, p) = write(&rows.join("\n"));
        let ds = load(&p, &o).unwrap();
        assert_eq!((ds.examples.len(), ds.skipped_broken_turns), (2, 4));
        let (_, items) = preview(&p, &o, 6).unwrap();
        assert_eq!(
            items.iter().map(|i| i.line).collect::<Vec<_>>(),
            [1, 2],
            "preview shows what trains"
        );
        let (_d, p) = write(&row(&["human", "human"]));
        let e = load(&p, &o).unwrap_err().to_string();
        assert!(e.contains("1 conversation(s) left out"), "{e}");
    }

    #[test]
    fn chat_formats_learn_only_the_replies() {
        let f = formatter();
        let o = chat_options(&f);
        let records = [
            r#"{"instruction": "Add", "input": "2 and 2", "output": "4", "system": "Be brief."}"#,
            r#"{"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]}"#,
            r#"{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}, {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Ciao"}]}"#,
        ];
        let expect = ["[[4<|im_end|>\n]]", "[[Hello<|im_end|>\n]]", "[[Yo<|im_end|>\n]]"];
        for (rec, want) in records.iter().zip(expect) {
            let (_d, p) = write(rec);
            let (_, items) = preview(&p, &o, 5).unwrap();
            assert!(items[0].marked.contains(want), "{}", items[0].marked);
            assert!(
                items[0].marked.starts_with("<|im_start|>"),
                "prompt not learned: {}",
                items[0].marked
            );
        }
        let (_d, p) = write(records[2]);
        let (_, items) = preview(&p, &o, 1).unwrap();
        assert!(
            items[0].marked.contains("[[Ciao<|im_end|>\n]]"),
            "every reply is learned: {}",
            items[0].marked
        );
        let (_d, p) = write(r#"{"text": "plain words"}"#);
        let ds = load(&p, &o).unwrap();
        assert_eq!(*ds.examples[0].input_ids.last().unwrap(), 2, "EOS appended");
        assert!(ds.examples[0].labels.iter().all(|l| *l >= 0));
        let (_d, p) = write(r#"{"conversations": [{"from": "robot", "value": "x"}]}"#);
        let e = load(&p, &o).unwrap_err().to_string();
        assert!(e.contains("d.jsonl:1") && e.contains("robot"), "{e}");
    }
}
