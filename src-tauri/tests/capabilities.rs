//! The window's capability grants exactly the app's commands (one `allow-*` permission per command listed in
//! build.rs) and nothing else; every listed command is registered in the invoke handler, and no other is.

use std::collections::BTreeSet;

fn read(path: &str) -> String {
    std::fs::read_to_string(format!("{}/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

/// The quoted snake_case names between `start` and the next `]`.
fn names_in(text: &str, start: &str) -> BTreeSet<String> {
    let from = text.find(start).unwrap_or_else(|| panic!("{start} not found"));
    let from = from + text[from..].find("= &[").expect("a list") + 4;
    let block = &text[from..from + text[from..].find(']').unwrap()];
    block
        .lines()
        .map(str::trim)
        .filter_map(|l| l.strip_prefix('"').and_then(|l| l.strip_suffix("\",")))
        .map(String::from)
        .collect()
}

#[test]
fn capability_grants_exactly_the_registered_commands() {
    let commands = names_in(&read("build.rs"), "const COMMANDS");
    assert!(commands.len() > 20, "{commands:?}");

    let capability: serde_json::Value = serde_json::from_str(&read("capabilities/main.json")).unwrap();
    let granted: BTreeSet<String> = capability["permissions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_string())
        .collect();
    let wanted: BTreeSet<String> = commands
        .iter()
        .map(|c| format!("allow-{}", c.replace('_', "-")))
        .collect();
    assert_eq!(
        granted, wanted,
        "capabilities/main.json must grant exactly build.rs's commands"
    );

    let lib = read("src/lib.rs");
    let from = lib.find("generate_handler![").unwrap();
    let handler = &lib[from..from + lib[from..].find("])").unwrap()];
    let registered: BTreeSet<String> = handler
        .lines()
        .filter_map(|l| l.trim().strip_suffix(',').and_then(|l| l.rsplit("::").next()))
        .map(String::from)
        .collect();
    assert_eq!(
        registered, commands,
        "generate_handler! and build.rs must list the same commands"
    );
}
