//! Where the worker's bytes live: local directories named by `file:///abs/dir` URIs or plain
//! paths (a mounted PVC, hostPath or NFS tier), and S3 tiers named by `s3://bucket/prefix`
//! (through aigc-storage; endpoint, region and credentials from the standard AWS variables
//! `AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`).
//!
//! Every read and write of datasets, checkpoints and models goes through this module.
//! Readers get a local directory: an S3 version is downloaded (checked against its manifest)
//! into the cache directory ([`cache_dir`]) first. Publishing is all-or-nothing: a version is
//! built in a staging directory, then renamed into place (local) or uploaded with its
//! manifest last (S3: readers look for the manifest, so they never see a partial version).

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use aigc_storage::{Location, MANIFEST_KEY, Manifest, ManifestEntry, S3Config, Tier};
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
            "URI {uri:?}: scheme {scheme:?} is not supported; use file:///abs/dir, a plain path or s3://bucket/prefix"
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

/// A local path holding what `uri` names: the path itself for local URIs; for `s3://` a copy
/// in the cache directory, checked against the version's manifest (or, for an S3 prefix
/// without a manifest, every object under it; or the single object the URI names).
pub fn local_copy(uri: &str) -> Result<PathBuf> {
    if !uri.starts_with("s3://") {
        return local_path(uri);
    }
    let location = Location::parse(uri)?;
    let (bucket, prefix) = match &location {
        Location::S3 { bucket, prefix, .. } => (bucket.clone(), prefix.clone()),
        Location::Filesystem { root } => return Ok(root.clone()),
    };
    let local = cache_dir().join(&bucket).join(prefix.trim_end_matches('/'));
    let uri = uri.to_string();
    block_on(async move {
        let tier = Tier::open(&location, &s3_config()).await?;
        if let Some(manifest) = tier.read_manifest().await? {
            for entry in &manifest.objects {
                download(&tier, &entry.key, &local, Some(entry)).await?;
            }
            fs::create_dir_all(&local).map_err(|e| WorkerError::io(&local, e))?;
            write_atomic(&local.join(MANIFEST_KEY), &manifest.to_json())?;
            return Ok(local);
        }
        let objects = tier.list("").await?;
        if !objects.is_empty() {
            for object in objects {
                download(&tier, &object.key, &local, None).await?;
            }
            return Ok(local);
        }
        // Not a prefix: perhaps one object (a GGUF file, a CSV file).
        let (parent, name) = match prefix.trim_end_matches('/').rsplit_once('/') {
            Some((parent, name)) => (format!("s3://{bucket}/{parent}"), name.to_string()),
            None => (
                format!("s3://{bucket}"),
                prefix.trim_end_matches('/').to_string(),
            ),
        };
        let parent_tier = Tier::open(&Location::parse(&parent)?, &s3_config()).await?;
        if name.is_empty() || parent_tier.head(&name).await?.is_none() {
            return Err(WorkerError::InvalidArgument(format!(
                "{uri}: no object and no objects under this prefix"
            )));
        }
        let dir = local.parent().unwrap_or(&local).to_path_buf();
        download(&parent_tier, &name, &dir, None).await?;
        Ok(local)
    })
}

/// Where S3 versions are downloaded to: `$AIGC_CACHE_DIR`, else `aigc-worker-cache` in the
/// system's temporary directory.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("AIGC_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("aigc-worker-cache"))
}

/// S3 settings from the standard AWS environment variables; the credentials come from the
/// SDK's default chain (`AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`, profiles, instance
/// roles).
pub fn s3_config() -> S3Config {
    let endpoint = std::env::var("AWS_ENDPOINT_URL")
        .ok()
        .filter(|e| !e.is_empty());
    let region = std::env::var("AWS_REGION")
        .or_else(|_| std::env::var("AWS_DEFAULT_REGION"))
        .unwrap_or_else(|_| "us-east-1".into());
    S3Config {
        force_path_style: endpoint.is_some(),
        endpoint,
        region,
        ..S3Config::default()
    }
}

/// Runs an S3 operation to completion from synchronous code, on its own thread and runtime
/// (so it works whether or not the caller is inside a tokio runtime).
fn block_on<T: Send>(work: impl std::future::Future<Output = Result<T>> + Send) -> Result<T> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| WorkerError::io("S3 runtime", e))?
                    .block_on(work)
            })
            .join()
            .map_err(|_| WorkerError::InvalidArgument("the S3 transfer thread panicked".into()))?
    })
}

/// Download `key` of `tier` to `dir/key`, unless a file with the manifest's size and SHA-256
/// is already there; with a manifest entry the download is checked against it.
async fn download(tier: &Tier, key: &str, dir: &Path, entry: Option<&ManifestEntry>) -> Result<()> {
    aigc_storage::check_key(key)?;
    let path = dir.join(key);
    if let Some(entry) = entry
        && path.is_file()
        && sha256_file(&path)? == (entry.size, entry.sha256.clone())
    {
        return Ok(());
    }
    let parent = parent_of(&path);
    fs::create_dir_all(&parent).map_err(|e| WorkerError::io(&parent, e))?;
    let partial = parent.join(format!(
        ".{}.download-{}",
        path.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    let mut reader = tier.get(key).await?;
    let mut file = tokio::fs::File::create(&partial)
        .await
        .map_err(|e| WorkerError::io(&partial, e))?;
    tokio::io::copy(&mut reader, &mut file)
        .await
        .map_err(|e| WorkerError::io(format!("downloading {key} from {}", tier.uri()), e))?;
    drop(file);
    if let Some(entry) = entry {
        let (size, sha256) = sha256_file(&partial)?;
        if size != entry.size || sha256 != entry.sha256 {
            let _ = fs::remove_file(&partial);
            return Err(WorkerError::Corrupt(format!(
                "{}/{key}: {size} bytes with sha256 {sha256}, but the manifest lists {} bytes with sha256 {}",
                tier.uri(),
                entry.size,
                entry.sha256
            )));
        }
    }
    fs::rename(&partial, &path).map_err(|e| WorkerError::io(&path, e))
}

/// A local directory that may be mirrored to S3 (checkpoints): the worker reads and writes
/// the local directory; [`Mirror::push`] makes the S3 prefix hold what it holds (new and
/// changed files first, then `latest`, then stale objects removed) and [`Mirror::pull`]
/// fetches the S3 prefix before a resume.
#[derive(Debug, Clone)]
pub struct Mirror {
    local: PathBuf,
    remote: Option<Location>,
}

/// Written last by [`Mirror::push`]: the file that says which checkpoint is complete.
const MIRROR_LAST: &str = "latest";

impl Mirror {
    /// `file:///abs/dir`, a plain path, or `s3://bucket/prefix` (mirrored from the cache).
    pub fn new(uri: &str) -> Result<Self> {
        if !uri.starts_with("s3://") {
            return Ok(Mirror {
                local: local_path(uri)?,
                remote: None,
            });
        }
        let location = Location::parse(uri)?;
        let local = match &location {
            Location::S3 { bucket, prefix, .. } => cache_dir()
                .join("mirrors")
                .join(bucket)
                .join(prefix.trim_end_matches('/')),
            Location::Filesystem { root } => root.clone(),
        };
        Ok(Mirror {
            local,
            remote: Some(location),
        })
    }

    /// The directory to read and write.
    pub fn local(&self) -> &Path {
        &self.local
    }

    /// Upload the local directory's files to the S3 prefix (no-op for a local mirror).
    pub fn push(&self) -> Result<()> {
        let Some(location) = self.remote.clone() else {
            return Ok(());
        };
        let mut keys = Vec::new();
        collect_files(&self.local, "", &mut keys)?;
        // `latest` goes last, so that it never names a checkpoint not yet uploaded.
        keys.sort_by_key(|k| k == MIRROR_LAST);
        let local = self.local.clone();
        block_on(async move {
            let tier = Tier::open(&location, &s3_config()).await?;
            let remote: Vec<(String, u64)> = tier
                .list("")
                .await?
                .into_iter()
                .map(|o| (o.key, o.size))
                .collect();
            for key in &keys {
                let path = local.join(key);
                let size = fs::metadata(&path)
                    .map_err(|e| WorkerError::io(&path, e))?
                    .len();
                // Checkpoint files are never rewritten under the same step name, so an
                // object of the same size is the same file; `latest` always changes.
                if key != MIRROR_LAST && remote.contains(&(key.clone(), size)) {
                    continue;
                }
                let file = tokio::fs::File::open(&path)
                    .await
                    .map_err(|e| WorkerError::io(&path, e))?;
                tier.put(key, Box::pin(file), size).await?;
            }
            for (key, _) in remote {
                if !keys.contains(&key) {
                    tier.delete(&key).await?;
                }
            }
            Ok(())
        })
    }

    /// Download every object of the S3 prefix into the local directory (no-op for a local
    /// mirror).
    pub fn pull(&self) -> Result<()> {
        let Some(location) = self.remote.clone() else {
            return Ok(());
        };
        let local = self.local.clone();
        block_on(async move {
            let tier = Tier::open(&location, &s3_config()).await?;
            for object in tier.list("").await? {
                download(&tier, &object.key, &local, None).await?;
            }
            Ok(())
        })
    }
}

/// Keys of the files below `dir` (hidden entries, such as partial writes, left out).
pub(crate) fn collect_files(dir: &Path, prefix: &str, keys: &mut Vec<String>) -> Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(WorkerError::io(dir, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| WorkerError::io(dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let key = format!("{prefix}{name}");
        if entry.path().is_dir() {
            collect_files(&entry.path(), &format!("{key}/"), keys)?;
        } else {
            keys.push(key);
        }
    }
    Ok(())
}

/// Where a new version is published: a local directory or an S3 tier.
#[derive(Debug, Clone)]
pub struct Output {
    uri: String,
    place: Place,
}

#[derive(Debug, Clone)]
enum Place {
    Local(PathBuf),
    S3(Location),
}

impl Output {
    /// Parse `--out`: `file:///abs/dir`, a plain path or `s3://bucket/prefix`.
    pub fn parse(uri: &str) -> Result<Self> {
        let place = if uri.starts_with("s3://") {
            Place::S3(Location::parse(uri)?)
        } else {
            Place::Local(local_path(uri)?)
        };
        Ok(Output {
            uri: uri.to_string(),
            place,
        })
    }

    /// The local directory, when the output is local.
    pub fn local(&self) -> Option<&Path> {
        match &self.place {
            Place::Local(path) => Some(path),
            Place::S3(_) => None,
        }
    }

    /// How reports name the output: the local path, or the URI.
    pub fn name(&self) -> String {
        match &self.place {
            Place::Local(path) => path.display().to_string(),
            Place::S3(_) => self.uri.clone(),
        }
    }

    /// Refuse an output that already holds a published version.
    pub fn check_unpublished(&self) -> Result<()> {
        match &self.place {
            Place::Local(path) => check_unpublished(path),
            Place::S3(location) => {
                let location = location.clone();
                let uri = self.uri.clone();
                block_on(async move {
                    let tier = Tier::open(&location, &s3_config()).await?;
                    if tier.head(MANIFEST_KEY).await?.is_some() {
                        return Err(WorkerError::InvalidArgument(format!(
                            "{uri} already holds a published version (it has a {MANIFEST_KEY}); choose another output"
                        )));
                    }
                    Ok(())
                })
            }
        }
    }

    /// A fresh, empty local staging directory to build the version in.
    pub fn staging_dir(&self) -> Result<PathBuf> {
        match &self.place {
            Place::Local(path) => staging_dir(path),
            Place::S3(Location::S3 { bucket, prefix, .. }) => {
                let name = format!("{bucket}/{prefix}").replace('/', "_");
                staging_dir(&cache_dir().join("staging").join(name))
            }
            Place::S3(Location::Filesystem { root }) => staging_dir(root),
        }
    }

    /// Move the complete version in `staging` (with its `manifest.json`) to the output:
    /// one rename locally; on S3 every object is uploaded, the manifest last, and the staging
    /// directory removed.
    pub fn publish(&self, staging: &Path, manifest: &Manifest) -> Result<()> {
        match &self.place {
            Place::Local(path) => publish(staging, path),
            Place::S3(location) => {
                self.check_unpublished()?;
                let location = location.clone();
                let staging_dir = staging.to_path_buf();
                let manifest = manifest.clone();
                block_on(async move {
                    let tier = Tier::open(&location, &s3_config()).await?;
                    for entry in &manifest.objects {
                        let path = staging_dir.join(&entry.key);
                        let file = tokio::fs::File::open(&path)
                            .await
                            .map_err(|e| WorkerError::io(&path, e))?;
                        tier.put(&entry.key, Box::pin(file), entry.size).await?;
                    }
                    tier.put_bytes(MANIFEST_KEY, manifest.to_json()).await?;
                    Ok(())
                })?;
                // Best effort: the staging copy is no longer needed.
                let _ = fs::remove_dir_all(staging);
                Ok(())
            }
        }
    }
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
        let err = local_path("gs://bucket/x").unwrap_err().to_string();
        assert!(err.contains("\"gs\"") && err.contains("file:///"), "{err}");
        assert!(local_path("file://relative").is_err());
    }
}
