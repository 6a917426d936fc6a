//! Bearer API keys read from a file, compared in constant time.

use std::path::Path;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::WorkerError;

/// The accepted keys, kept only as SHA-256 digests so that comparing takes the same time
/// whatever the length or content of the presented key.
#[derive(Clone)]
pub struct ApiKeys {
    digests: Vec<[u8; 32]>,
}

impl ApiKeys {
    /// Reads one key per line; blank lines and lines starting with `#` are skipped.
    pub fn from_file(path: &Path) -> Result<Self, WorkerError> {
        let text = std::fs::read_to_string(path).map_err(|e| WorkerError::io(path, e))?;
        let keys: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .collect();
        if keys.is_empty() {
            return Err(WorkerError::ApiKeys {
                path: path.to_path_buf(),
                reason: "holds no keys (one key per line expected)".into(),
            });
        }
        Ok(Self::from_keys(keys))
    }

    pub fn from_keys<'a>(keys: impl IntoIterator<Item = &'a str>) -> Self {
        Self {
            digests: keys.into_iter().map(digest).collect(),
        }
    }

    /// Whether an `Authorization` header value carries one of the keys.
    pub fn accepts(&self, authorization: Option<&[u8]>) -> bool {
        let Some(key) = authorization.and_then(|h| h.strip_prefix(b"Bearer ")) else {
            return false;
        };
        let presented = digest_bytes(key);
        // Every key is compared, so the time does not reveal which one matched.
        self.digests.iter().fold(0u8, |found, accepted| {
            found | accepted.ct_eq(&presented).unwrap_u8()
        }) == 1
    }
}

fn digest(key: &str) -> [u8; 32] {
    digest_bytes(key.as_bytes())
}

fn digest_bytes(key: &[u8]) -> [u8; 32] {
    Sha256::digest(key).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_listed_bearer_key_is_accepted() {
        let keys = ApiKeys::from_keys(["alpha", "beta"]);
        assert!(keys.accepts(Some(b"Bearer beta")));
        assert!(!keys.accepts(Some(b"Bearer gamma")));
        assert!(!keys.accepts(Some(b"beta")));
        assert!(!keys.accepts(Some(b"Bearer ")));
        assert!(!keys.accepts(None));
    }

    #[test]
    fn a_file_without_keys_is_refused() {
        let path = std::env::temp_dir().join(format!("aigc-keys-{}", std::process::id()));
        std::fs::write(&path, "# no keys here\n\n").unwrap();
        let error = ApiKeys::from_file(&path).err().expect("no keys");
        assert!(error.to_string().contains("no keys"), "{error}");
        std::fs::write(&path, "k1\n").unwrap();
        assert!(
            ApiKeys::from_file(&path)
                .unwrap()
                .accepts(Some(b"Bearer k1"))
        );
        std::fs::remove_file(&path).unwrap();
    }
}
