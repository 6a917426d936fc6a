//! Streaming SHA-256: hashing objects, verifying them against manifest entries and building
//! manifests from a listing. Memory use is one buffer per object in flight, whatever the size.

use futures::{StreamExt, TryStreamExt};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::tier::is_metadata_key;
use crate::{Error, MANIFEST_KEY, Manifest, ManifestEntry, Result, Tier};

const BUF_SIZE: usize = 1 << 20;

/// Size and lowercase hex SHA-256 of everything `reader` yields.
pub async fn hash_reader(mut reader: impl AsyncRead + Unpin) -> std::io::Result<(u64, String)> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0; BUF_SIZE];
    let mut size = 0u64;
    loop {
        let n = reader.read(&mut buf).await?;
        if n == 0 {
            return Ok((size, hex::encode(hasher.finalize())));
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
}

impl Tier {
    /// Size and SHA-256 of the object, streamed.
    pub async fn digest(&self, key: &str) -> Result<(u64, String)> {
        match self {
            Tier::Filesystem(t) => t.digest(key).await,
            Tier::S3(_) => {
                let reader = self.get(key).await?;
                hash_reader(reader).await.map_err(|e| Error::Io {
                    op: "reading",
                    path: format!("{}{key}", self.uri()),
                    source: e,
                })
            }
        }
    }

    /// Fail with [`Error::Mismatch`] unless the object has the entry's size and SHA-256.
    pub async fn verify(&self, entry: &ManifestEntry) -> Result<()> {
        let (size, sha256) = self.digest(&entry.key).await?;
        check_entry(&self.uri(), entry, size, &sha256)
    }

    /// A manifest of every data object in the tier, hashing `concurrency` objects at a time.
    pub async fn build_manifest(&self, concurrency: usize) -> Result<Manifest> {
        let listing = self.list("").await?;
        let entries: Vec<ManifestEntry> =
            futures::stream::iter(listing.into_iter().filter(|m| !is_metadata_key(&m.key)))
                .map(|meta| async move {
                    let (size, sha256) = self.digest(&meta.key).await?;
                    Ok::<_, Error>(ManifestEntry {
                        key: meta.key,
                        size,
                        sha256,
                    })
                })
                .buffer_unordered(concurrency.max(1))
                .try_collect()
                .await?;
        Manifest::new(entries)
    }

    /// The manifest stored next to the data, if there is one.
    pub async fn read_manifest(&self) -> Result<Option<Manifest>> {
        if self.head(MANIFEST_KEY).await?.is_none() {
            return Ok(None);
        }
        Manifest::from_json(&self.get_bytes(MANIFEST_KEY).await?).map(Some)
    }

    /// Store the manifest next to the data.
    pub async fn write_manifest(&self, manifest: &Manifest) -> Result<()> {
        self.put_bytes(MANIFEST_KEY, manifest.to_json()).await
    }
}

/// Compare what was found with a manifest entry.
pub(crate) fn check_entry(
    tier: &str,
    entry: &ManifestEntry,
    size: u64,
    sha256: &str,
) -> Result<()> {
    if size == entry.size && sha256 == entry.sha256 {
        return Ok(());
    }
    Err(Error::Mismatch {
        tier: tier.to_owned(),
        key: entry.key.clone(),
        expected_size: entry.size,
        expected_sha256: entry.sha256.clone(),
        actual_size: size,
        actual_sha256: sha256.to_owned(),
    })
}
