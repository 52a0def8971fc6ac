//! Chat templates and tokenization, as transformers does them: the template comes from `chat_template.jinja` or
//! `tokenizer_config.json`, is rendered by a real Jinja engine (minijinja, with Python string methods,
//! `trim_blocks`/`lstrip_blocks` and `raise_exception` as transformers sets them up), and the text is tokenized
//! without adding special tokens (the template already holds them).

use crate::error::{Result, TrainError};
use serde_json::Value;
use std::path::{Path, PathBuf};

pub use freezetune_data::messages::Message;

/// A token's `[start, end)` byte range in the text it came from.
pub type ByteSpan = (usize, usize);

pub struct ChatFormatter {
    tokenizer: tokenizers::Tokenizer,
    template: Option<String>,
    template_source: PathBuf,
    bos_token: String,
    eos_token: String,
    /// Token id appended to plain text examples so the model learns where a document ends.
    pub eos_id: Option<u32>,
}

fn special(config: &Value, key: &str) -> String {
    match &config[key] {
        Value::String(s) => s.clone(),
        Value::Object(o) => o.get("content").and_then(Value::as_str).unwrap_or_default().to_string(),
        _ => String::new(),
    }
}

/// Instructions a chat template may run beyond 64 per byte of the messages (real templates need a few thousand).
const TEMPLATE_FUEL: u64 = 2_000_000;
/// Bytes a rendering may produce beyond 4 per byte of the messages.
const TEMPLATE_OUTPUT: usize = 1 << 20;

/// A writer that refuses bytes past `limit`.
struct Capped {
    buf: Vec<u8>,
    limit: usize,
}

impl std::io::Write for Capped {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        if self.buf.len() + b.len() > self.limit {
            self.buf.resize(self.limit, 0);
            return Err(std::io::Error::other("output budget exceeded"));
        }
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl ChatFormatter {
    /// Loads `tokenizer.json` and the chat template of the model folder.
    pub fn load(model_dir: &Path) -> Result<ChatFormatter> {
        let tok_path = model_dir.join("tokenizer.json");
        let bad = |reason: String| TrainError::Config {
            path: tok_path.clone(),
            reason,
        };
        // The tokenizers library panics on some malformed files (found by fuzzing: a decoder its deserializer
        // cannot read); a downloaded file must not take the app down with it.
        let loaded = std::panic::catch_unwind(|| tokenizers::Tokenizer::from_file(&tok_path))
            .map_err(|_| bad("cannot load the tokenizer: the tokenizers library failed on this file".into()))?;
        let tokenizer = loaded.map_err(|e| bad(format!("cannot load the tokenizer: {e}")))?;
        let cfg_path = model_dir.join("tokenizer_config.json");
        let config: Value = std::fs::read_to_string(&cfg_path)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or(Value::Null);
        let jinja = model_dir.join("chat_template.jinja");
        let (template, template_source) = if jinja.is_file() {
            (
                Some(std::fs::read_to_string(&jinja).map_err(|e| TrainError::Io {
                    path: jinja.clone(),
                    source: e,
                })?),
                jinja,
            )
        } else {
            let t = match &config["chat_template"] {
                Value::String(s) => Some(s.clone()),
                // A list of named templates: the default one.
                Value::Array(list) => list
                    .iter()
                    .find(|t| t["name"] == "default")
                    .and_then(|t| t["template"].as_str())
                    .map(str::to_string),
                _ => None,
            };
            (t, cfg_path)
        };
        let eos_token = special(&config, "eos_token");
        let eos_id = tokenizer.token_to_id(&eos_token);
        Ok(ChatFormatter {
            tokenizer,
            template,
            template_source,
            bos_token: special(&config, "bos_token"),
            eos_token,
            eos_id,
        })
    }

    pub fn has_template(&self) -> bool {
        self.template.is_some()
    }

    /// Renders `messages` with the chat template.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        // The template engine can panic on a malformed template (found by fuzzing: formatting the error of a
        // broken `for` overflows in minijinja's debug info); a downloaded template must not take the app down.
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.render_inner(messages, add_generation_prompt)
        }))
        .unwrap_or_else(|_| {
            Err(TrainError::Config {
                path: self.template_source.clone(),
                reason: "chat template: the template engine failed on this template; it is likely malformed".into(),
            })
        })
    }

    fn render_inner(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let Some(template) = &self.template else {
            return Err(TrainError::Config {
                path: self.template_source.clone(),
                reason:
                    "the model has no chat template (chat_template.jinja or tokenizer_config.json's chat_template); \
                         use the text or tokenized format"
                        .into(),
            });
        };
        let mut env = minijinja::Environment::new();
        // A template comes with a downloaded model: its loops get a budget (instructions, scaled with the messages)
        // and its output a ceiling, so a hostile one fails by name instead of hanging or filling memory.
        let text: usize = messages.iter().map(|m| m.content.len()).sum();
        env.set_fuel(Some(TEMPLATE_FUEL + 64 * text as u64));
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<String, minijinja::Error> {
                Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, msg))
            },
        );
        env.add_function("strftime_now", |_fmt: String| "1 January 2026".to_string());
        let bad = |e: minijinja::Error| TrainError::Config {
            path: self.template_source.clone(),
            reason: format!("chat template: {e:#}"),
        };
        env.add_template("chat", template).map_err(bad)?;
        let ctx = minijinja::context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token,
            eos_token => self.eos_token,
        };
        let limit = TEMPLATE_OUTPUT + 4 * text;
        let mut out = Capped { buf: Vec::new(), limit };
        let rendered = env
            .get_template("chat")
            .and_then(|t| t.render_captured_to(ctx, &mut out).map(|_| ()));
        if out.buf.len() >= limit {
            return Err(bad(minijinja::Error::new(
                minijinja::ErrorKind::InvalidOperation,
                format!("the chat template's output ran past {limit} bytes for these messages"),
            )));
        }
        rendered.map_err(bad)?;
        String::from_utf8(out.buf).map_err(|_| TrainError::Config {
            path: self.template_source.clone(),
            reason: "chat template: the output is not UTF-8".into(),
        })
    }

    /// Token ids and byte offsets of `text`, without added special tokens.
    pub fn encode(&self, text: &str) -> Result<(Vec<u32>, Vec<ByteSpan>)> {
        let enc = self.tokenizer.encode(text, false).map_err(|e| TrainError::Config {
            path: PathBuf::from("tokenizer.json"),
            reason: format!("tokenizing failed: {e}"),
        })?;
        Ok((enc.get_ids().to_vec(), enc.get_offsets().to_vec()))
    }

    pub fn decode(&self, ids: &[u32]) -> String {
        self.tokenizer.decode(ids, false).unwrap_or_default()
    }

    /// A conversation as token ids and labels: only the assistant turns (content and the template's end-of-turn
    /// marker) are learned unless `train_on_prompt`. Each assistant span is found by rendering the conversation up
    /// to it with and without the reply, as the template would present it at generation time.
    pub fn conversation(&self, messages: &[Message], train_on_prompt: bool) -> Result<(String, Vec<u32>, Vec<i64>)> {
        let text = self.render(messages, false)?;
        let mut spans = Vec::new();
        for (i, m) in messages.iter().enumerate() {
            if m.role == "assistant" {
                let start = self.render(&messages[..i], true)?.len();
                let end = self.render(&messages[..=i], false)?.len();
                if !text.starts_with(&self.render(&messages[..=i], false)?) {
                    return Err(TrainError::Config {
                        path: self.template_source.clone(),
                        reason:
                            "the chat template renders a conversation differently from its beginning, so the replies \
                                 cannot be located; use train_on_prompt = true or the tokenized format"
                                .into(),
                    });
                }
                spans.push((start, end));
            }
        }
        let (ids, offsets) = self.encode(&text)?;
        let labels = ids
            .iter()
            .zip(&offsets)
            .map(|(&id, &(s, _))| {
                if train_on_prompt || spans.iter().any(|&(a, b)| s >= a && s < b) {
                    id as i64
                } else {
                    -100
                }
            })
            .collect();
        Ok((text, ids, labels))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/models/llama")
    }

    fn msg(role: &str, content: &str) -> Message {
        Message {
            role: role.into(),
            content: content.into(),
        }
    }

    #[test]
    fn renders_chatml_and_masks_everything_but_the_reply() {
        let f = ChatFormatter::load(&fixture()).unwrap();
        let conv = [msg("user", "Hi there"), msg("assistant", "Hello!")];
        assert_eq!(
            f.render(&conv, false).unwrap(),
            "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n"
        );
        let (_, ids, labels) = f.conversation(&conv, false).unwrap();
        let learned: Vec<u32> = ids
            .iter()
            .zip(&labels)
            .filter(|(_, l)| **l >= 0)
            .map(|(i, _)| *i)
            .collect();
        assert_eq!(f.decode(&learned), "Hello!<|im_end|>\n");
        assert_eq!(ids[0], 1, "<|im_start|> is one special token");
        let (_, _, all) = f.conversation(&conv, true).unwrap();
        assert!(all.iter().all(|l| *l >= 0));
    }

    #[test]
    fn a_hostile_template_runs_out_of_budget_instead_of_hanging_or_filling_memory() {
        let dir = tempfile::tempdir().unwrap();
        for f in ["tokenizer.json", "tokenizer_config.json", "config.json"] {
            std::fs::copy(fixture().join(f), dir.path().join(f)).unwrap();
        }
        let conv = [msg("user", "Hi")];
        let render = |template: &str| {
            std::fs::write(dir.path().join("chat_template.jinja"), template).unwrap();
            ChatFormatter::load(dir.path()).unwrap().render(&conv, false)
        };
        let start = std::time::Instant::now();
        let e = render("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}")
            .unwrap_err()
            .to_string();
        assert!(e.contains("fuel"), "{e}");
        let e =
            render("{% for i in range(100000) %}{{ 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx' }}{% endfor %}")
                .unwrap_err()
                .to_string();
        assert!(e.contains("ran past"), "{e}");
        assert!(start.elapsed().as_secs() < 30, "budgets end a hostile template quickly");
    }
}
