//! Helpers shared by the prepare and train integration tests: scratch directories, the shared
//! datasets and the committed corpus.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

/// A directory removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(label: &str) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let dir =
            std::env::temp_dir().join(format!("aigc-worker-{label}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn join(&self, p: &str) -> PathBuf {
        self.0.join(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The shared datasets folder: `$AIGC_SHARED_DATASETS`, or `../shared/datasets` next to the
/// repository root. Panics with both places named when neither has the file.
pub fn shared_dataset(name: &str) -> PathBuf {
    let repo_root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let mut candidates = Vec::new();
    if let Ok(dir) = std::env::var("AIGC_SHARED_DATASETS") {
        candidates.push(PathBuf::from(dir).join(name));
    }
    candidates.push(repo_root.join("../shared/datasets").join(name));
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "dataset {name} not found; looked at {candidates:?}. It ships in ../shared/datasets next to the repository (set AIGC_SHARED_DATASETS to its folder to override)"
            )
        })
}

/// The text corpus committed with the tests.
pub fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/corpus.txt")
}

/// Write a schema file with every column of the breast-cancer CSV as a required number,
/// and the label as an integer in [0, 1].
pub fn breast_cancer_schema(dir: &Path, csv: &Path) -> PathBuf {
    let header = std::fs::read_to_string(csv).unwrap();
    let header = header.lines().next().unwrap();
    let names: Vec<&str> = header.split(',').collect();
    let mut yaml = String::from("columns:\n");
    for (i, name) in names.iter().enumerate() {
        if i + 1 == names.len() {
            yaml.push_str(&format!(
                "  - {{name: {name}, type: integer, required: true, minimum: 0, maximum: 1}}\n"
            ));
        } else {
            yaml.push_str(&format!(
                "  - {{name: {name}, type: number, required: true, minimum: 0}}\n"
            ));
        }
    }
    let path = dir.join("schema.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}
