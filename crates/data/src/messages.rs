//! A record as the conversation it holds: alpaca (instruction / input / output, system, history), sharegpt
//! (conversations of human / gpt turns, system) and OpenAI messages, read as LLaMA-Factory's converters read them.
//! The trainer renders these with the model's chat template; the hand-off writes them for engines that render
//! them with theirs.

use serde::Serialize;
use serde_json::Value;

/// One turn of a conversation: `system`, `user` or `assistant`, and its text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

/// Whether a conversation's turns are as LLaMA-Factory's converters accept them: an optional system turn first,
/// then user and assistant alternating, from the user, ending with the assistant. A conversation that is not (two
/// user turns in a row, a reply with no question, a question with no reply) would train other text than
/// LLaMA-Factory does on the same data.
pub fn alternates(messages: &[Message]) -> bool {
    let turns = match messages.first() {
        Some(m) if m.role == "system" => &messages[1..],
        _ => messages,
    };
    let expected = |i: usize| if i % 2 == 0 { "user" } else { "assistant" };
    !turns.is_empty() && turns.len() % 2 == 0 && turns.iter().enumerate().all(|(i, m)| m.role == expected(i))
}

fn text_field(rec: &Value, key: &str) -> Result<Option<String>, String> {
    match rec.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(format!("\"{key}\" is {other}, not a string")),
    }
}

fn msg(role: &str, content: String) -> Message {
    Message {
        role: role.to_string(),
        content,
    }
}

/// An alpaca record: the system prompt, each history pair, then the instruction (with its input on the next line)
/// and the output.
pub fn alpaca(rec: &Value) -> Result<Vec<Message>, String> {
    let instruction = text_field(rec, "instruction")?.ok_or("no \"instruction\"")?;
    let output = text_field(rec, "output")?.ok_or("no \"output\"")?;
    let input = text_field(rec, "input")?.filter(|s| !s.is_empty());
    let mut messages = Vec::new();
    if let Some(system) = text_field(rec, "system")?.filter(|s| !s.is_empty()) {
        messages.push(msg("system", system));
    }
    if let Some(history) = rec.get("history").filter(|h| !h.is_null()) {
        for (k, turn) in history
            .as_array()
            .ok_or("\"history\" is not a list")?
            .iter()
            .enumerate()
        {
            let pair = turn
                .as_array()
                .filter(|p| p.len() == 2)
                .ok_or(format!("history entry {k} is not a [question, answer] pair"))?;
            let (q, a) = (pair[0].as_str(), pair[1].as_str());
            let (Some(q), Some(a)) = (q, a) else {
                return Err(format!("history entry {k} holds a non-string"));
            };
            messages.push(msg("user", q.to_string()));
            messages.push(msg("assistant", a.to_string()));
        }
    }
    let prompt = match input {
        Some(i) => format!("{instruction}\n{i}"),
        None => instruction,
    };
    messages.push(msg("user", prompt));
    messages.push(msg("assistant", output));
    Ok(messages)
}

/// A sharegpt record: the system prompt, then each turn with its speaker as a role.
pub fn sharegpt(rec: &Value) -> Result<Vec<Message>, String> {
    let turns = rec
        .get("conversations")
        .and_then(Value::as_array)
        .ok_or("no \"conversations\" list")?;
    let mut messages = Vec::new();
    if let Some(system) = text_field(rec, "system")?.filter(|s| !s.is_empty()) {
        messages.push(msg("system", system));
    }
    for (k, t) in turns.iter().enumerate() {
        let from = t["from"].as_str().ok_or(format!("turn {k} has no \"from\""))?;
        let value = t["value"].as_str().ok_or(format!("turn {k} has no string \"value\""))?;
        let role = match from {
            "human" | "user" => "user",
            "gpt" | "assistant" | "model" => "assistant",
            "system" => "system",
            other => {
                return Err(format!(
                    "turn {k}: unknown speaker {other:?} (expected human, gpt or system)"
                ))
            }
        };
        messages.push(msg(role, value.to_string()));
    }
    Ok(messages)
}

/// An OpenAI `messages` record, roles checked.
pub fn openai(rec: &Value) -> Result<Vec<Message>, String> {
    let turns = rec
        .get("messages")
        .and_then(Value::as_array)
        .ok_or("no \"messages\" list")?;
    turns
        .iter()
        .enumerate()
        .map(|(k, t)| {
            let role = t["role"].as_str().ok_or(format!("message {k} has no \"role\""))?;
            if !matches!(role, "system" | "user" | "assistant") {
                return Err(format!("message {k}: role {role:?} is not system, user or assistant"));
            }
            let content = t["content"]
                .as_str()
                .ok_or(format!("message {k} has no string \"content\""))?;
            Ok(msg(role, content.to_string()))
        })
        .collect()
}
