//! An Ollama `Modelfile` for an exported file: `FROM` the file beside it, the chat template in Ollama's Go
//! template syntax where FreezeTune recognises the format (ChatML), and the end-of-turn token as a stop word.
//! Other templates are left to Ollama, which reads the Jinja template stored in the GGUF
//! (`tokenizer.chat_template`) for the formats it knows.

use crate::error::Result;
use crate::tokenizer::chat_template;
use std::path::Path;

const CHATML: &str = r#"{{- if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}
{{- range .Messages }}<|im_start|>{{ .Role }}
{{ .Content }}<|im_end|>
{{ end }}<|im_start|>assistant
"#;

pub fn modelfile(gguf: &Path, model_dir: &Path) -> Result<String> {
    let file = gguf
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut text = format!(
        "# Written by FreezeTune for {file}.\n# ollama create my-model -f Modelfile && ollama run my-model\nFROM ./{file}\n"
    );
    match chat_template(model_dir)? {
        Some(t) if t.contains("<|im_start|>") => {
            text.push_str(&format!(
                "TEMPLATE \"\"\"{CHATML}\"\"\"\nPARAMETER stop \"<|im_end|>\"\n"
            ));
        }
        Some(_) => text.push_str("# The chat template is stored in the GGUF file (tokenizer.chat_template).\n"),
        None => text.push_str("# The model has no chat template: Ollama prompts it with plain text.\n"),
    }
    Ok(text)
}
