//! Filesystem tiers: a directory on a mounted volume (PVC, hostPath, NFS).
//!
//! Keys map to paths below the root and can never leave it: keys are checked with
//! [`check_key`](crate::check_key), and every path is resolved through symlinks and must stay
//! under the resolved root. Writes go to a partial file next to the target and are renamed
//! into place, so an object is either whole or absent.

use std::io::{self, Read};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::tier::{ObjectMeta, ObjectReader, Readability};
use crate::{Error, Result, check_key};

/// File-name prefix of in-flight writes; never listed, removed by
/// [`FilesystemTier::remove_partial_files`].
pub const PARTIAL_PREFIX: &str = ".aigc-partial-";

const BUF_SIZE: usize = 1 << 20;

/// A tier rooted at a directory.
#[derive(Clone, Debug)]
pub struct FilesystemTier {
    root: PathBuf,
}

impl FilesystemTier {
    /// A tier rooted at `root`, which must be absolute.
    pub fn new(root: &Path) -> Result<Self> {
        if !root.is_absolute() {
            return Err(Error::InvalidUri {
                uri: root.display().to_string(),
                reason: "a filesystem tier root must be an absolute path".into(),
            });
        }
        Ok(FilesystemTier {
            root: root.to_owned(),
        })
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn uri(&self) -> String {
        format!("file://{}", self.root.display())
    }

    pub(crate) async fn probe(&self) -> Result<()> {
        match tokio::fs::metadata(&self.root).await {
            Ok(m) if m.is_dir() => Ok(()),
            Ok(_) => Err(self.missing("the root is not a directory")),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(self.missing("the root directory is missing"))
            }
            Err(e) => Err(io_error("inspecting", &self.root, e)),
        }
    }

    fn missing(&self, detail: &str) -> Error {
        Error::TierNotFound {
            tier: self.uri(),
            detail: detail.into(),
        }
    }

    /// The path for `key`, checked to stay under the root even through symlinks.
    fn resolve(&self, key: &str) -> Result<PathBuf> {
        check_key(key)?;
        let path = self.root.join(key);
        let Ok(root) = self.root.canonicalize() else {
            // No root yet, so nothing below it can be a symlink.
            return Ok(path);
        };
        let mut existing = path.as_path();
        loop {
            match existing.canonicalize() {
                Ok(real) if real.starts_with(&root) => return Ok(path),
                Ok(real) => {
                    return Err(Error::OutsideRoot {
                        path: format!("{} (-> {})", path.display(), real.display()),
                        root: root.display().to_string(),
                    });
                }
                Err(_) => match existing.parent() {
                    Some(parent) => existing = parent,
                    None => return Ok(path),
                },
            }
        }
    }

    pub(crate) async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        self.probe().await?;
        let this = self.clone();
        let prefix = prefix.to_owned();
        blocking(move || {
            let mut out = Vec::new();
            let root = this
                .root
                .canonicalize()
                .map_err(|e| io_error("resolving", &this.root, e))?;
            this.walk(&root, &this.root, &mut out)?;
            out.retain(|m| m.key.starts_with(&prefix));
            Ok(out)
        })
        .await
    }

    fn walk(&self, real_root: &Path, dir: &Path, out: &mut Vec<ObjectMeta>) -> Result<()> {
        let entries = std::fs::read_dir(dir).map_err(|e| io_error("listing", dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| io_error("listing", dir, e))?;
            let path = entry.path();
            let name = entry.file_name();
            let Some(name) = name.to_str() else {
                return Err(Error::InvalidKey {
                    key: path.display().to_string(),
                    reason: "file names must be UTF-8".into(),
                });
            };
            if name.starts_with(PARTIAL_PREFIX) {
                continue;
            }
            let mut file_type = entry
                .file_type()
                .map_err(|e| io_error("inspecting", &path, e))?;
            if file_type.is_symlink() {
                let real = path
                    .canonicalize()
                    .map_err(|e| io_error("resolving", &path, e))?;
                if !real.starts_with(real_root) {
                    return Err(Error::OutsideRoot {
                        path: format!("{} (-> {})", path.display(), real.display()),
                        root: real_root.display().to_string(),
                    });
                }
                file_type = std::fs::metadata(&real)
                    .map_err(|e| io_error("inspecting", &real, e))?
                    .file_type();
                if file_type.is_dir() {
                    // Following directory links could loop; their targets are listed anyway.
                    continue;
                }
            }
            if file_type.is_dir() {
                self.walk(real_root, &path, out)?;
            } else if file_type.is_file() {
                let size = std::fs::metadata(&path)
                    .map_err(|e| io_error("inspecting", &path, e))?
                    .len();
                let key = key_of(&self.root, &path)?;
                out.push(ObjectMeta {
                    key,
                    size,
                    storage_class: None,
                    readable: Readability::Readable,
                });
            }
        }
        Ok(())
    }

    pub(crate) async fn head(&self, key: &str) -> Result<Option<ObjectMeta>> {
        let path = self.resolve(key)?;
        match tokio::fs::metadata(&path).await {
            Ok(m) if m.is_file() => Ok(Some(ObjectMeta {
                key: key.to_owned(),
                size: m.len(),
                storage_class: None,
                readable: Readability::Readable,
            })),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_error("inspecting", &path, e)),
        }
    }

    pub(crate) async fn get(&self, key: &str) -> Result<ObjectReader> {
        let path = self.resolve(key)?;
        match tokio::fs::File::open(&path).await {
            Ok(file) => Ok(Box::pin(file)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(Error::NotFound {
                tier: self.uri(),
                key: key.to_owned(),
            }),
            Err(e) => Err(io_error("opening", &path, e)),
        }
    }

    pub(crate) async fn put(&self, key: &str, mut body: ObjectReader, size: u64) -> Result<()> {
        let path = self.resolve(key)?;
        let partial = partial_path(&path);
        create_parent(&path).await?;
        let result = async {
            let mut file = tokio::fs::File::create(&partial)
                .await
                .map_err(|e| io_error("creating", &partial, e))?;
            let written = tokio::io::copy(&mut body, &mut file)
                .await
                .map_err(|e| io_error("writing", &partial, e))?;
            if written != size {
                return Err(Error::Io {
                    op: "writing",
                    path: path.display().to_string(),
                    source: io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("expected {size} bytes, the source gave {written}"),
                    ),
                });
            }
            file.flush()
                .await
                .map_err(|e| io_error("writing", &partial, e))?;
            tokio::fs::rename(&partial, &path)
                .await
                .map_err(|e| io_error("renaming into", &path, e))
        }
        .await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&partial).await;
        }
        result
    }

    /// Copy `from` in `src` to `to` in this tier through the kernel (no user-space buffer).
    pub(crate) async fn copy_from(&self, src: &FilesystemTier, from: &str, to: &str) -> Result<()> {
        let source = src.resolve(from)?;
        let target = self.resolve(to)?;
        let (tier, key) = (src.uri(), from.to_owned());
        create_parent(&target).await?;
        blocking(move || {
            let partial = partial_path(&target);
            let copied = std::fs::copy(&source, &partial).map_err(|e| {
                if e.kind() == io::ErrorKind::NotFound && !source.exists() {
                    Error::NotFound { tier, key }
                } else {
                    io_error("copying to", &partial, e)
                }
            });
            let result = copied.and_then(|_| {
                std::fs::rename(&partial, &target)
                    .map_err(|e| io_error("renaming into", &target, e))
            });
            if result.is_err() {
                let _ = std::fs::remove_file(&partial);
            }
            result
        })
        .await
    }

    /// Size and SHA-256 of the object, read in fixed-size chunks.
    pub(crate) async fn digest(&self, key: &str) -> Result<(u64, String)> {
        let path = self.resolve(key)?;
        let (tier, key) = (self.uri(), key.to_owned());
        blocking(move || {
            let mut file = std::fs::File::open(&path).map_err(|e| {
                if e.kind() == io::ErrorKind::NotFound {
                    Error::NotFound { tier, key }
                } else {
                    io_error("opening", &path, e)
                }
            })?;
            let mut hasher = Sha256::new();
            let mut buf = vec![0; BUF_SIZE];
            let mut size = 0u64;
            loop {
                let n = file
                    .read(&mut buf)
                    .map_err(|e| io_error("reading", &path, e))?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                size += n as u64;
            }
            Ok((size, hex::encode(hasher.finalize())))
        })
        .await
    }

    pub(crate) async fn delete(&self, key: &str) -> Result<()> {
        let path = self.resolve(key)?;
        match tokio::fs::remove_file(&path).await {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_error("deleting", &path, e)),
        }
        // Tidy directories the delete emptied; a non-empty one stops the climb.
        let mut dir = path.parent();
        while let Some(d) = dir {
            if d == self.root
                || !d.starts_with(&self.root)
                || tokio::fs::remove_dir(d).await.is_err()
            {
                break;
            }
            dir = d.parent();
        }
        Ok(())
    }

    pub(crate) async fn remove_partial_files(&self) -> Result<usize> {
        if tokio::fs::metadata(&self.root).await.is_err() {
            return Ok(0);
        }
        let root = self.root.clone();
        blocking(move || {
            let mut removed = 0;
            let mut dirs = vec![root];
            while let Some(dir) = dirs.pop() {
                for entry in std::fs::read_dir(&dir).map_err(|e| io_error("listing", &dir, e))? {
                    let entry = entry.map_err(|e| io_error("listing", &dir, e))?;
                    let ft = entry
                        .file_type()
                        .map_err(|e| io_error("inspecting", &entry.path(), e))?;
                    if ft.is_dir() {
                        dirs.push(entry.path());
                    } else if entry
                        .file_name()
                        .to_string_lossy()
                        .starts_with(PARTIAL_PREFIX)
                    {
                        std::fs::remove_file(entry.path())
                            .map_err(|e| io_error("deleting", &entry.path(), e))?;
                        removed += 1;
                    }
                }
            }
            Ok(removed)
        })
        .await
    }

    pub(crate) async fn sync(&self, keys: &[String]) -> Result<()> {
        let paths = keys
            .iter()
            .map(|k| self.resolve(k))
            .collect::<Result<Vec<_>>>()?;
        blocking(move || {
            let mut dirs = std::collections::BTreeSet::new();
            for path in &paths {
                std::fs::File::open(path)
                    .and_then(|f| f.sync_all())
                    .map_err(|e| io_error("syncing", path, e))?;
                if let Some(parent) = path.parent() {
                    dirs.insert(parent.to_owned());
                }
            }
            for dir in &dirs {
                std::fs::File::open(dir)
                    .and_then(|f| f.sync_all())
                    .map_err(|e| io_error("syncing", dir, e))?;
            }
            Ok(())
        })
        .await
    }
}

fn key_of(root: &Path, path: &Path) -> Result<String> {
    let rel = path.strip_prefix(root).map_err(|_| Error::OutsideRoot {
        path: path.display().to_string(),
        root: root.display().to_string(),
    })?;
    let parts: Vec<&str> = rel.iter().filter_map(|p| p.to_str()).collect();
    let key = parts.join("/");
    check_key(&key)?;
    Ok(key)
}

fn partial_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    path.with_file_name(format!("{PARTIAL_PREFIX}{name}-{:016x}", random_u64()))
}

fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::process::id().into());
    h.finish()
}

async fn create_parent(path: &Path) -> Result<()> {
    if let Some(parent) = path.parent() {
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(|e| io_error("creating directory", parent, e))?;
    }
    Ok(())
}

fn io_error(op: &'static str, path: &Path, source: io::Error) -> Error {
    Error::Io {
        op,
        path: path.display().to_string(),
        source,
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}
