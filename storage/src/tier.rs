//! The object API every tier backend offers: list, head, get and put as streams, copy, delete.
//!
//! [`Tier`] is a closed enum over the backends so callers (the migration executor, the
//! worker, the operator) can match on pairs of backends to pick the cheapest copy path.

use std::fmt;
use std::pin::Pin;

use tokio::io::AsyncRead;

use crate::fs::FilesystemTier;
use crate::location::Location;
use crate::s3::{S3Config, S3Tier};
use crate::{Error, Result};

/// A readable object body. Streams: never holds the whole object in memory.
pub type ObjectReader = Pin<Box<dyn AsyncRead + Send>>;

/// What the tier knows about one object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectMeta {
    /// Key relative to the tier root.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// Backend storage class (S3 only), e.g. `GLACIER`.
    pub storage_class: Option<String>,
    /// Whether the object can be read now.
    pub readable: Readability,
}

/// Whether an object's bytes can be read now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Readability {
    /// Readable.
    Readable,
    /// Archived: a restore must be requested first.
    Archived,
    /// Archived with a restore in progress.
    Restoring,
}

/// State of an archive restore reported in [`Error::Restoring`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestoreState {
    /// This call asked the backend to restore the object.
    Requested,
    /// A restore was already under way.
    InProgress,
}

impl fmt::Display for RestoreState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RestoreState::Requested => "restore requested now",
            RestoreState::InProgress => "restore already in progress",
        })
    }
}

/// A storage tier: a filesystem directory or an S3 bucket and prefix.
#[derive(Clone, Debug)]
pub enum Tier {
    /// A directory on a mounted volume.
    Filesystem(FilesystemTier),
    /// An S3-compatible bucket.
    S3(S3Tier),
}

impl Tier {
    /// Open the tier at `location`; `s3` configures S3 access (ignored for filesystem tiers).
    /// Nothing is created: a missing root directory is created by the first write.
    pub async fn open(location: &Location, s3: &S3Config) -> Result<Tier> {
        Ok(match location {
            Location::Filesystem { root } => Tier::Filesystem(FilesystemTier::new(root)?),
            Location::S3 { bucket, prefix, .. } => Tier::S3(S3Tier::new(s3, bucket, prefix).await?),
        })
    }

    /// Where this tier is, as plain data.
    pub fn location(&self) -> Location {
        match self {
            Tier::Filesystem(t) => Location::Filesystem {
                root: t.root().to_owned(),
            },
            Tier::S3(t) => Location::S3 {
                endpoint: t.endpoint().map(str::to_owned),
                bucket: t.bucket().to_owned(),
                prefix: t.prefix().to_owned(),
            },
        }
    }

    /// The tier as a URI, for messages.
    pub fn uri(&self) -> String {
        self.location().to_string()
    }

    /// Fail unless the tier's directory or bucket exists and is accessible.
    pub async fn probe(&self) -> Result<()> {
        match self {
            Tier::Filesystem(t) => t.probe().await,
            Tier::S3(t) => t.probe().await,
        }
    }

    /// Objects whose key starts with `prefix`, sorted by key. Leftovers of interrupted
    /// writes are not listed.
    pub async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        let mut objects = match self {
            Tier::Filesystem(t) => t.list(prefix).await?,
            Tier::S3(t) => t.list(prefix).await?,
        };
        objects.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(objects)
    }

    /// The object's metadata, or `None` when there is no object under `key`.
    pub async fn head(&self, key: &str) -> Result<Option<ObjectMeta>> {
        match self {
            Tier::Filesystem(t) => t.head(key).await,
            Tier::S3(t) => t.head(key).await,
        }
    }

    /// The object's bytes as a stream. An archived S3 object that is not restored yet fails
    /// with [`Error::Restoring`] after asking for a restore with the tier's retrieval settings.
    pub async fn get(&self, key: &str) -> Result<ObjectReader> {
        match self {
            Tier::Filesystem(t) => t.get(key).await,
            Tier::S3(t) => t.get(key).await,
        }
    }

    /// The whole object in memory; for small objects such as manifests and journals.
    pub async fn get_bytes(&self, key: &str) -> Result<Vec<u8>> {
        use tokio::io::AsyncReadExt;
        let mut reader = self.get(key).await?;
        let mut buf = Vec::new();
        reader
            .read_to_end(&mut buf)
            .await
            .map_err(|e| self.read_error(key, e))?;
        Ok(buf)
    }

    /// Store `size` bytes read from `body` under `key`. The object appears whole or not at
    /// all; large S3 objects are uploaded in parts.
    pub async fn put(&self, key: &str, body: ObjectReader, size: u64) -> Result<()> {
        match self {
            Tier::Filesystem(t) => t.put(key, body, size).await,
            Tier::S3(t) => t.put(key, body, size).await,
        }
    }

    /// Store a small object from memory.
    pub async fn put_bytes(&self, key: &str, bytes: Vec<u8>) -> Result<()> {
        let size = bytes.len() as u64;
        self.put(key, Box::pin(std::io::Cursor::new(bytes)), size)
            .await
    }

    /// Copy `from` to `to` inside this tier without moving the bytes through this process
    /// where the backend allows it.
    pub async fn copy(&self, from: &str, to: &str) -> Result<()> {
        match self {
            Tier::Filesystem(t) => t.copy_from(t, from, to).await,
            Tier::S3(t) => {
                let size = t
                    .head(from)
                    .await?
                    .ok_or_else(|| Error::NotFound {
                        tier: self.uri(),
                        key: from.to_owned(),
                    })?
                    .size;
                t.copy_from(t, from, to, size).await.map(|_| ())
            }
        }
    }

    /// Delete the object; deleting a missing object is not an error.
    pub async fn delete(&self, key: &str) -> Result<()> {
        match self {
            Tier::Filesystem(t) => t.delete(key).await,
            Tier::S3(t) => t.delete(key).await,
        }
    }

    /// Remove what interrupted writes left behind: unfinished multipart uploads on S3,
    /// partial files on a filesystem. Returns how many were removed.
    pub async fn abort_incomplete_uploads(&self) -> Result<usize> {
        match self {
            Tier::Filesystem(t) => t.remove_partial_files().await,
            Tier::S3(t) => t.abort_multipart_uploads().await,
        }
    }

    /// Make every write so far durable (fsync on filesystems; S3 writes already are).
    pub async fn sync(&self, keys: &[String]) -> Result<()> {
        match self {
            Tier::Filesystem(t) => t.sync(keys).await,
            Tier::S3(_) => Ok(()),
        }
    }

    fn read_error(&self, key: &str, e: std::io::Error) -> Error {
        Error::Io {
            op: "reading",
            path: format!("{}/{key}", self.uri().trim_end_matches('/')),
            source: e,
        }
    }
}

/// Keys the crate itself writes next to the data: the manifest and the migration journal.
/// They are not data, are never listed in a manifest, and are stored in a class readable
/// without a restore.
pub fn is_metadata_key(key: &str) -> bool {
    key == crate::MANIFEST_KEY || key == crate::migration::JOURNAL_KEY
}
