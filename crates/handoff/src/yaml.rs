//! A flat YAML file written key by key in the order given, with comments: what LLaMA-Factory's configs look like.
//! Strings are written as JSON strings, which YAML reads as the same double-quoted scalars.

pub(crate) struct Yaml {
    text: String,
}

impl Yaml {
    pub fn new(header: &str) -> Yaml {
        let mut text = String::new();
        for line in header.lines() {
            text.push_str(&format!("# {line}\n"));
        }
        Yaml { text }
    }

    pub fn section(&mut self, title: &str) {
        self.text.push_str(&format!("\n### {title}\n"));
    }

    pub fn comment(&mut self, line: &str) {
        self.text.push_str(&format!("# {line}\n"));
    }

    pub fn str(&mut self, key: &str, value: &str) {
        let quoted = serde_json::to_string(value).expect("a string serializes");
        self.text.push_str(&format!("{key}: {quoted}\n"));
    }

    pub fn num(&mut self, key: &str, value: impl std::fmt::Display) {
        self.text.push_str(&format!("{key}: {value}\n"));
    }

    pub fn float(&mut self, key: &str, value: f64) {
        // `1e-4` is a string to YAML 1.1 readers (PyYAML); write floats so they read back as floats.
        // PyYAML's float needs a dot, and a sign after the `e`.
        let text = if value == 0.0 || (value.abs() >= 1e-3 && value.abs() < 1e6) {
            format!("{value}")
        } else {
            let t = format!("{value:.6e}");
            match t.split_once('e') {
                Some((m, e)) if !e.starts_with('-') => format!("{m}e+{e}"),
                _ => t,
            }
        };
        let text = if text.contains(['.', 'e']) {
            text
        } else {
            format!("{text}.0")
        };
        self.text.push_str(&format!("{key}: {text}\n"));
    }

    pub fn bool(&mut self, key: &str, value: bool) {
        self.text.push_str(&format!("{key}: {value}\n"));
    }

    /// Lines already in YAML (the freeze keys core's export writes).
    pub fn raw(&mut self, lines: &str) {
        self.text.push_str(lines);
        if !lines.ends_with('\n') {
            self.text.push('\n');
        }
    }

    pub fn finish(self) -> String {
        self.text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_read_back_as_floats_in_yaml_1_1() {
        let mut y = Yaml::new("x");
        y.float("lr", 1e-4);
        y.float("decay", 0.0);
        y.float("beta", 0.999);
        y.float("epochs", 3.0);
        y.float("big", 2e7);
        y.str("name", "a \"quoted\" name: yes");
        let text = y.finish();
        assert!(text.contains("lr: 1.000000e-4\n"), "{text}");
        assert!(text.contains("decay: 0\n") || text.contains("decay: 0.0\n"), "{text}");
        assert!(text.contains("beta: 0.999\n"), "{text}");
        assert!(text.contains("epochs: 3.0\n"), "{text}");
        assert!(text.contains("big: 2.000000e+7\n"), "{text}");
        assert!(text.contains(r#"name: "a \"quoted\" name: yes""#), "{text}");
    }
}
