//! Where the worker's bytes live: local directories named by `file:///abs/dir` URIs or plain
//! paths (a mounted PVC, hostPath or NFS tier).
//!
//! Every read and write of datasets, checkpoints and models goes through this module, so that
//! switching to aigc-storage's object API (S3 and filesystem tiers) changes only this file.
//! Publishing is all-or-nothing: data is written to a staging directory next to the target and
//! renamed into place once complete, so a failed run never leaves a partial version behind.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use aigc_storage::{MANIFEST_KEY, Manifest, ManifestEntry};
use sha2::{Digest, Sha256};

use crate::{Result, WorkerError};

/// The local directory a URI names: `file:///abs/dir` or a plain path.
pub fn local_path(uri: &str) -> Result<PathBuf> {
    if let Some(rest) = uri.strip_prefix("file://") {
        if !rest.starts_with('/') {
            return Err(WorkerError::InvalidArgument(format!(
                "URI {uri:?}: a file URI needs an absolute path, like file:///data/set"
            )));
        }
        return Ok(PathBuf::from(rest));
    }
    if let Some((scheme, _)) = uri.split_once("://") {
        return Err(WorkerError::InvalidArgument(format!(
            "URI {uri:?}: scheme {scheme:?} is not supported by this build; use file:///abs/dir or a plain path"
        )));
    }
    if uri.is_empty() {
        return Err(WorkerError::InvalidArgument(
            "an empty path was given".into(),
        ));
    }
    Ok(PathBuf::from(uri))
}

/// A fresh, empty staging directory next to `target`, for building a version before
/// [`publish`] moves it into place.
pub fn staging_dir(target: &Path) -> Result<PathBuf> {
    let name = target
        .file_name()
        .ok_or_else(|| {
            WorkerError::InvalidArgument(format!("{} has no final component", target.display()))
        })?
        .to_string_lossy();
    let parent = parent_of(target);
    fs::create_dir_all(&parent)
        .map_err(|e| WorkerError::io(format!("creating {}", parent.display()), e))?;
    let staging = parent.join(format!(".{name}.partial-{}", std::process::id()));
    if staging.exists() {
        fs::remove_dir_all(&staging)
            .map_err(|e| WorkerError::io(format!("clearing {}", staging.display()), e))?;
    }
    fs::create_dir_all(&staging)
        .map_err(|e| WorkerError::io(format!("creating {}", staging.display()), e))?;
    Ok(staging)
}

/// Refuse to overwrite a published version at `target`.
pub fn check_unpublished(target: &Path) -> Result<()> {
    if target.join(MANIFEST_KEY).exists() {
        return Err(WorkerError::InvalidArgument(format!(
            "{} already holds a published version (it has a {MANIFEST_KEY}); choose another output",
            target.display()
        )));
    }
    Ok(())
}

/// Move a complete staging directory to `target` in one rename. An existing empty `target`
/// is replaced; a published one is refused.
pub fn publish(staging: &Path, target: &Path) -> Result<()> {
    check_unpublished(target)?;
    if target.exists() {
        fs::remove_dir(target).map_err(|e| {
            WorkerError::io(
                format!(
                    "replacing {} (it must be empty or absent)",
                    target.display()
                ),
                e,
            )
        })?;
    }
    fs::rename(staging, target).map_err(|e| {
        WorkerError::io(
            format!("moving {} to {}", staging.display(), target.display()),
            e,
        )
    })
}

/// Write a file so that readers see either the old or the new content, never a torn one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    };
    write().map_err(|e| WorkerError::io(format!("writing {}", path.display()), e))
}

/// Size and lowercase hex SHA-256 of a file, read in blocks.
pub fn sha256_file(path: &Path) -> Result<(u64, String)> {
    let mut f = fs::File::open(path)
        .map_err(|e| WorkerError::io(format!("opening {}", path.display()), e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut size = 0u64;
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| WorkerError::io(format!("reading {}", path.display()), e))?;
        if n == 0 {
            break;
        }
        size += n as u64;
        hasher.update(&buf[..n]);
    }
    Ok((size, hex::encode(hasher.finalize())))
}

/// Hash the objects `keys` under `dir` and write their manifest as `dir/manifest.json`.
pub fn write_manifest(dir: &Path, keys: &[String]) -> Result<Manifest> {
    let mut entries = Vec::with_capacity(keys.len());
    for key in keys {
        let (size, sha256) = sha256_file(&dir.join(key))?;
        entries.push(ManifestEntry {
            key: key.clone(),
            size,
            sha256,
        });
    }
    let manifest = Manifest::new(entries)?;
    write_atomic(&dir.join(MANIFEST_KEY), &manifest.to_json())?;
    Ok(manifest)
}

/// The manifest of the version stored in `dir`.
pub fn read_manifest(dir: &Path) -> Result<Manifest> {
    let path = dir.join(MANIFEST_KEY);
    let bytes = fs::read(&path).map_err(|e| {
        WorkerError::io(
            format!(
                "reading {} (is this a prepared dataset or a trained model?)",
                path.display()
            ),
            e,
        )
    })?;
    Ok(Manifest::from_json(&bytes)?)
}

/// The manifest stored in `dir`, or `None` when there is none.
pub fn read_manifest_if_present(dir: &Path) -> Result<Option<Manifest>> {
    if dir.join(MANIFEST_KEY).is_file() {
        read_manifest(dir).map(Some)
    } else {
        Ok(None)
    }
}

/// A local path holding what `uri` names, for readers that need files (model loaders).
pub fn local_copy(uri: &str) -> Result<PathBuf> {
    local_path(uri)
}

/// The bytes of object `key` of a manifest, checked against its size and SHA-256.
pub fn read_verified(dir: &Path, manifest: &Manifest, key: &str) -> Result<Vec<u8>> {
    let entry = manifest.entry(key).ok_or_else(|| {
        WorkerError::Corrupt(format!(
            "{}: the manifest does not list {key:?}",
            dir.display()
        ))
    })?;
    let path = dir.join(key);
    let bytes =
        fs::read(&path).map_err(|e| WorkerError::io(format!("reading {}", path.display()), e))?;
    let digest = hex::encode(Sha256::digest(&bytes));
    if bytes.len() as u64 != entry.size || digest != entry.sha256 {
        return Err(WorkerError::Corrupt(format!(
            "{}: {} bytes with sha256 {digest}, but the manifest lists {} bytes with sha256 {}",
            path.display(),
            bytes.len(),
            entry.size,
            entry.sha256
        )));
    }
    Ok(bytes)
}

fn parent_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_map_to_paths_or_are_refused_clearly() {
        assert_eq!(local_path("file:///a/b").unwrap(), PathBuf::from("/a/b"));
        assert_eq!(local_path("rel/dir").unwrap(), PathBuf::from("rel/dir"));
        let err = local_path("s3://bucket/x").unwrap_err().to_string();
        assert!(err.contains("\"s3\"") && err.contains("file:///"), "{err}");
        assert!(local_path("file://relative").is_err());
    }
}
