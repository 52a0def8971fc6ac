//! Metal has no f64: no tensor on the training path may be f64. f64 appears only in host arithmetic and in
//! export.rs, which converts on the host (the tensor is copied to the CPU first); this test keeps it that way.

use std::path::Path;

fn sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn no_f64_tensors_outside_the_host_side_export() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    assert!(files.len() > 10);
    let mut found = Vec::new();
    for file in files {
        let name = file.strip_prefix(&src).unwrap().display().to_string();
        let text = std::fs::read_to_string(&file).unwrap();
        for (i, line) in text.lines().enumerate() {
            let tensor_f64 = ["DType::F64", "to_scalar::<f64>", "to_vec1::<f64>", "CpuStorage::F64"]
                .iter()
                .any(|p| line.contains(p));
            // device.rs only names the dtype; export.rs casts a host copy; weights.rs reads a stored f64 tensor into
            // host memory, which params.rs casts there before uploading.
            if tensor_f64 && !matches!(name.as_str(), "export.rs" | "device.rs" | "weights.rs") {
                found.push(format!("{name}:{}: {}", i + 1, line.trim()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "f64 tensors on the training path:\n{}",
        found.join("\n")
    );
    let export = std::fs::read_to_string(src.join("export.rs")).unwrap();
    assert!(
        export.contains(".to_device(&candle_core::Device::Cpu)"),
        "export casts a host copy"
    );
}
