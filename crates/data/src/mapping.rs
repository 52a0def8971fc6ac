//! Column mapping as LLaMA-Factory's `dataset_info.json` expresses it (`formatting`, `columns`, `tags`): a row
//! of any layout becomes one of the trainer's records — alpaca (`instruction`, `input`, `output`, `system`,
//! `history`), sharegpt (`conversations` of `from` human / gpt / system and `value`, `system`), `text`, or
//! tokenized as it is. Detected from the first row where no mapping is given: alpaca, sharegpt, OpenAI
//! messages, prompt/completion, text, tokenized; preference rows (chosen/rejected) are refused by name.

use freezetune_core::data_spec::{Columns, Formatting, Tags};
use serde_json::{json, Map, Value};

/// A dataset's mapping, with LLaMA-Factory's defaults filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct Mapping {
    pub formatting: Formatting,
    pub columns: Columns,
    pub tags: Tags,
}

impl Mapping {
    pub fn new(formatting: Formatting, columns: Columns, tags: Tags) -> Mapping {
        Mapping {
            formatting,
            columns,
            tags,
        }
    }

    /// The mapping a row's keys imply, or why there is none.
    pub fn detect(row: &Value) -> Result<Mapping, String> {
        let has = |k: &str| row.get(k).is_some();
        let columns = Columns::default();
        let plain = |f| Ok(Mapping::new(f, Columns::default(), Tags::default()));
        if has("input_ids") {
            plain(Formatting::Tokenized)
        } else if has("chosen") && has("rejected") {
            Err(
                "the rows hold chosen/rejected pairs: preference data, for a kind of training FreezeTune does not \
                 do yet (DPO/ORPO); choose an instruction or chat dataset"
                    .into(),
            )
        } else if has("instruction") {
            plain(Formatting::Alpaca)
        } else if has("prompt") && (has("completion") || has("response")) {
            let response = if has("completion") { "completion" } else { "response" };
            let columns = Columns {
                prompt: Some("prompt".into()),
                response: Some(response.into()),
                ..columns
            };
            Ok(Mapping::new(Formatting::Alpaca, columns, Tags::default()))
        } else if has("conversations") {
            plain(Formatting::Sharegpt)
        } else if has("messages") {
            Ok(Mapping::new(
                Formatting::Sharegpt,
                Columns {
                    messages: Some("messages".into()),
                    ..columns
                },
                openai_tags(),
            ))
        } else if has("text") {
            plain(Formatting::Text)
        } else {
            let keys: Vec<&str> = row
                .as_object()
                .map(|o| o.keys().map(String::as_str).collect())
                .unwrap_or_default();
            Err(format!(
                "cannot tell the layout from the columns {keys:?}: expected instruction/output, prompt/completion, \
                 conversations, messages, text or input_ids; name the columns in the dataset's `columns`"
            ))
        }
    }

    /// The trainer's record for `row`.
    pub fn apply(&self, row: &Value) -> Result<Value, String> {
        match self.formatting {
            Formatting::Tokenized => Ok(row.clone()),
            Formatting::Text => {
                let column = self.columns.prompt.as_deref().unwrap_or("text");
                Ok(json!({ "text": text(row, column)?.ok_or(format!("no \"{column}\" column"))? }))
            }
            Formatting::Alpaca => self.alpaca(row),
            Formatting::Sharegpt => self.sharegpt(row),
        }
    }

    fn alpaca(&self, row: &Value) -> Result<Value, String> {
        let c = &self.columns;
        let prompt = c.prompt.as_deref().unwrap_or("instruction");
        let response = c.response.as_deref().unwrap_or("output");
        if row.get(response).is_some_and(Value::is_array) {
            return Err(format!(
                "\"{response}\" is a list: ranked responses are preference data, which FreezeTune does not train yet"
            ));
        }
        let mut out = Map::new();
        let instruction = text(row, prompt)?.ok_or(format!("no \"{prompt}\" column"))?;
        out.insert("instruction".into(), instruction.into());
        let query = text(row, c.query.as_deref().unwrap_or("input"))?;
        out.insert("input".into(), query.unwrap_or_default().into());
        out.insert(
            "output".into(),
            text(row, response)?.ok_or(format!("no \"{response}\" column"))?.into(),
        );
        if let Some(system) = text(row, c.system.as_deref().unwrap_or("system"))? {
            out.insert("system".into(), system.into());
        }
        if let Some(history) = row
            .get(c.history.as_deref().unwrap_or("history"))
            .filter(|h| !h.is_null())
        {
            out.insert("history".into(), history.clone());
        }
        Ok(Value::Object(out))
    }

    fn sharegpt(&self, row: &Value) -> Result<Value, String> {
        let t = &self.tags;
        let column = self.columns.messages.as_deref().unwrap_or("conversations");
        let (role_tag, content_tag) = (
            t.role_tag.as_deref().unwrap_or("from"),
            t.content_tag.as_deref().unwrap_or("value"),
        );
        let user = t.user_tag.as_deref().unwrap_or("human");
        let assistant = t.assistant_tag.as_deref().unwrap_or("gpt");
        let system = t.system_tag.as_deref().unwrap_or("system");
        let tools = [
            t.observation_tag.as_deref().unwrap_or("observation"),
            t.function_tag.as_deref().unwrap_or("function_call"),
        ];
        let turns = row
            .get(column)
            .and_then(Value::as_array)
            .ok_or(format!("no \"{column}\" list"))?;
        let mut conversations = Vec::with_capacity(turns.len());
        for (k, turn) in turns.iter().enumerate() {
            let role = turn
                .get(role_tag)
                .and_then(Value::as_str)
                .ok_or(format!("turn {k} has no \"{role_tag}\""))?;
            let content = text(turn, content_tag)?.ok_or(format!("turn {k} has no \"{content_tag}\""))?;
            let from = if role == user {
                "human"
            } else if role == assistant {
                "gpt"
            } else if role == system {
                "system"
            } else if tools.contains(&role) {
                return Err(format!(
                    "turn {k} is a tool turn ({role:?}): tool calls are not trained yet"
                ));
            } else {
                return Err(format!(
                    "turn {k}: role {role:?} is none of {user:?}, {assistant:?}, {system:?}; set the dataset's tags \
                     (user_tag, assistant_tag, system_tag)"
                ));
            };
            conversations.push(json!({ "from": from, "value": content }));
        }
        let mut out = Map::new();
        out.insert("conversations".into(), conversations.into());
        if let Some(s) = text(row, self.columns.system.as_deref().unwrap_or("system"))? {
            out.insert("system".into(), s.into());
        }
        Ok(Value::Object(out))
    }
}

/// OpenAI's chat layout, as LLaMA-Factory's dataset_info.json writes it for `messages` datasets.
fn openai_tags() -> Tags {
    Tags {
        role_tag: Some("role".into()),
        content_tag: Some("content".into()),
        user_tag: Some("user".into()),
        assistant_tag: Some("assistant".into()),
        system_tag: Some("system".into()),
        ..Tags::default()
    }
}

/// A string column (absent or null: `None`).
fn text(row: &Value, column: &str) -> Result<Option<String>, String> {
    match row.get(column) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(format!("\"{column}\" is {other}, not text")),
    }
}
