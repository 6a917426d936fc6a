//! Manifests: the list of objects that make up one version of a Dataset or Model, each with its
//! size and SHA-256, and the manifest digest that is that version's content identity.
//!
//! A manifest is stored as JSON next to the data under [`MANIFEST_KEY`]. Its digest is the
//! SHA-256 of its canonical JSON (entries sorted by key, no whitespace), so the same content
//! gives the same digest wherever and whenever it was written.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::Error;

/// Object key of the manifest, relative to the data's prefix.
pub const MANIFEST_KEY: &str = "manifest.json";

/// Version of the manifest format written by this crate.
pub const MANIFEST_FORMAT: u32 = 1;

/// One object of a manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestEntry {
    /// Key relative to the data's prefix, `/`-separated, never absolute and never with `..`.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// Lowercase hex SHA-256 of the object's bytes.
    pub sha256: String,
}

/// The objects of one version of a Dataset or Model.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// Format version; see [`MANIFEST_FORMAT`].
    pub format: u32,
    /// Objects sorted by key.
    pub objects: Vec<ManifestEntry>,
    /// Sum of the object sizes.
    pub total_bytes: u64,
}

impl Manifest {
    /// A manifest of these objects. Keys are checked and sorted; a repeated key is an error.
    pub fn new(mut objects: Vec<ManifestEntry>) -> Result<Self, Error> {
        objects.sort_by(|a, b| a.key.cmp(&b.key));
        let mut seen = BTreeSet::new();
        for entry in &objects {
            check_key(&entry.key)?;
            if !is_sha256_hex(&entry.sha256) {
                return Err(Error::InvalidManifest(format!(
                    "object {:?} has sha256 {:?}: expected 64 lowercase hex digits",
                    entry.key, entry.sha256
                )));
            }
            if !seen.insert(entry.key.as_str()) {
                return Err(Error::InvalidManifest(format!(
                    "object {:?} is listed twice",
                    entry.key
                )));
            }
        }
        let total_bytes = objects.iter().map(|e| e.size).sum();
        Ok(Manifest {
            format: MANIFEST_FORMAT,
            objects,
            total_bytes,
        })
    }

    /// Parse and check a stored manifest.
    pub fn from_json(bytes: &[u8]) -> Result<Self, Error> {
        let parsed: Manifest = serde_json::from_slice(bytes)
            .map_err(|e| Error::InvalidManifest(format!("not a manifest: {e}")))?;
        if parsed.format != MANIFEST_FORMAT {
            return Err(Error::InvalidManifest(format!(
                "format {} is not supported; this build reads format {MANIFEST_FORMAT}",
                parsed.format
            )));
        }
        let checked = Manifest::new(parsed.objects)?;
        if checked.total_bytes != parsed.total_bytes {
            return Err(Error::InvalidManifest(format!(
                "totalBytes is {} but the objects add up to {}",
                parsed.total_bytes, checked.total_bytes
            )));
        }
        Ok(checked)
    }

    /// Canonical JSON: sorted entries, no whitespace. This is what gets stored and hashed.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a manifest always serialises")
    }

    /// `sha256:<hex>` of the canonical JSON: the content identity shown in resource status.
    pub fn digest(&self) -> String {
        format!("sha256:{}", hex::encode(Sha256::digest(self.to_json())))
    }

    /// The entry for `key`, if listed.
    pub fn entry(&self, key: &str) -> Option<&ManifestEntry> {
        self.objects
            .binary_search_by(|e| e.key.as_str().cmp(key))
            .ok()
            .map(|i| &self.objects[i])
    }
}

/// Reject keys that could escape a tier's root or prefix: empty, absolute, `..`, `.`, empty
/// segments, backslashes and control characters.
pub fn check_key(key: &str) -> Result<(), Error> {
    let bad = |why: &str| {
        Err(Error::InvalidKey {
            key: key.to_owned(),
            reason: why.to_owned(),
        })
    };
    if key.is_empty() {
        return bad("it is empty");
    }
    if key.starts_with('/') {
        return bad("it is absolute; keys are relative to the tier root");
    }
    if key.contains('\\') || key.chars().any(char::is_control) {
        return bad("it contains a backslash or a control character");
    }
    for segment in key.split('/') {
        match segment {
            "" => return bad("it has an empty path segment"),
            "." | ".." => return bad("it has a '.' or '..' segment"),
            _ => {}
        }
    }
    Ok(())
}

fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key: &str, size: u64, fill: char) -> ManifestEntry {
        ManifestEntry {
            key: key.into(),
            size,
            sha256: fill.to_string().repeat(64),
        }
    }

    #[test]
    fn digest_does_not_depend_on_insertion_order() {
        let a = Manifest::new(vec![entry("b.csv", 2, 'b'), entry("a.csv", 1, 'a')]).unwrap();
        let b = Manifest::new(vec![entry("a.csv", 1, 'a'), entry("b.csv", 2, 'b')]).unwrap();
        assert_eq!(a.digest(), b.digest());
        assert_eq!(a.total_bytes, 3);
        assert!(a.digest().starts_with("sha256:") && a.digest().len() == 7 + 64);
    }

    #[test]
    fn digest_changes_with_content() {
        let a = Manifest::new(vec![entry("a.csv", 1, 'a')]).unwrap();
        let b = Manifest::new(vec![entry("a.csv", 1, 'c')]).unwrap();
        assert_ne!(a.digest(), b.digest());
    }

    #[test]
    fn json_round_trips_and_tampering_is_caught() {
        let m = Manifest::new(vec![entry("x/y.bin", 10, 'f')]).unwrap();
        assert_eq!(Manifest::from_json(&m.to_json()).unwrap(), m);
        let tampered = String::from_utf8(m.to_json())
            .unwrap()
            .replace("\"totalBytes\":10", "\"totalBytes\":11");
        let err = Manifest::from_json(tampered.as_bytes()).unwrap_err();
        assert!(err.to_string().contains("totalBytes is 11"), "{err}");
    }

    #[test]
    fn unsafe_keys_are_rejected_with_the_reason() {
        for key in ["", "/etc/passwd", "a/../b", "./a", "a//b", "a\\b", "a\nb"] {
            let err = Manifest::new(vec![entry(key, 1, 'a')]).unwrap_err();
            assert!(err.to_string().contains(&format!("{key:?}")), "{err}");
        }
        assert!(check_key("shards/part-0001.csv").is_ok());
    }

    #[test]
    fn duplicates_and_bad_digests_are_rejected() {
        let err = Manifest::new(vec![entry("a", 1, 'a'), entry("a", 1, 'a')]).unwrap_err();
        assert!(err.to_string().contains("listed twice"));
        let err = Manifest::new(vec![entry("a", 1, 'Z')]).unwrap_err();
        assert!(err.to_string().contains("64 lowercase hex"));
    }

    #[test]
    fn entries_are_found_by_key() {
        let m = Manifest::new(vec![entry("b", 2, 'b'), entry("a", 1, 'a')]).unwrap();
        assert_eq!(m.entry("b").unwrap().size, 2);
        assert!(m.entry("c").is_none());
    }
}
