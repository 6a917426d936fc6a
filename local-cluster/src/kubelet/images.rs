//! Which local executable an image runs as. There are no container images here: an image
//! names a program. By default an image whose repository's last path segment is `aigc-worker`
//! or `aigc-operator` (any registry, any tag or digest) runs that binary from the binary
//! directory; configured [`ImageMapping`]s come first.

use std::path::{Path, PathBuf};

/// Binaries of this workspace that images map to by default.
pub const DEFAULT_BINARIES: [&str; 2] = ["aigc-worker", "aigc-operator"];

/// An extra image -> executable mapping.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageMapping {
    /// The image: matches the full reference, the repository without tag or digest, or the
    /// repository's last path segment (`busybox` matches `docker.io/library/busybox:1.36`).
    pub image: String,
    /// The program run for it.
    pub executable: PathBuf,
}

impl ImageMapping {
    /// Map `image` to `executable`.
    pub fn new(image: impl Into<String>, executable: impl Into<PathBuf>) -> Self {
        Self {
            image: image.into(),
            executable: executable.into(),
        }
    }
}

/// The repository part of an image reference: without `@digest` and without `:tag`.
pub fn repository(image: &str) -> &str {
    let image = image.split('@').next().unwrap_or(image);
    let last_slash = image.rfind('/').map_or(0, |i| i + 1);
    match image[last_slash..].find(':') {
        Some(colon) => &image[..last_slash + colon],
        None => image,
    }
}

/// The last path segment of the repository (`ghcr.io/acme/aigc-worker:0.1` -> `aigc-worker`).
pub fn short_name(image: &str) -> &str {
    let repository = repository(image);
    repository.rsplit('/').next().unwrap_or(repository)
}

/// Resolves images to executables.
#[derive(Clone, Debug)]
pub struct Images {
    mappings: Vec<ImageMapping>,
    binary_dir: PathBuf,
}

impl Images {
    /// Configured mappings first, then the workspace binaries in `binary_dir`.
    pub fn new(mappings: Vec<ImageMapping>, binary_dir: PathBuf) -> Self {
        Self {
            mappings,
            binary_dir,
        }
    }

    /// The directory the default binaries are taken from.
    pub fn binary_dir(&self) -> &Path {
        &self.binary_dir
    }

    /// The executable for `image`, or a message saying why there is none.
    pub fn resolve(&self, image: &str) -> Result<PathBuf, String> {
        let repository = repository(image);
        let short = short_name(image);
        if let Some(mapping) = self
            .mappings
            .iter()
            .find(|m| m.image == image || m.image == repository || m.image == short)
        {
            return Ok(mapping.executable.clone());
        }
        if DEFAULT_BINARIES.contains(&short) {
            let path = self.binary_dir.join(short);
            if path.is_file() {
                return Ok(path);
            }
            return Err(format!(
                "image {image:?} maps to the binary {short}, but {} does not exist (build it with `cargo build --bin {short}` or set the cluster's binary directory)",
                path.display()
            ));
        }
        let mut known: Vec<String> = self.mappings.iter().map(|m| m.image.clone()).collect();
        known.extend(DEFAULT_BINARIES.iter().map(|b| (*b).to_owned()));
        Err(format!(
            "image {image:?} is not available on this simulated node: pods run as local processes and only these images map to executables: {}",
            known.join(", ")
        ))
    }
}

/// The default binary directory: the one holding the running executable; from a test binary
/// in `target/<profile>/deps`, its parent, where cargo puts the workspace's binaries.
pub fn default_binary_dir() -> PathBuf {
    let exe_dir = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_owned))
        .unwrap_or_default();
    let has_binaries = DEFAULT_BINARIES.iter().any(|b| exe_dir.join(b).is_file());
    match exe_dir.parent() {
        Some(parent) if !has_binaries && exe_dir.ends_with("deps") => parent.to_owned(),
        _ => exe_dir,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repositories_drop_tags_and_digests_but_not_registry_ports() {
        assert_eq!(
            repository("ghcr.io/acme/aigc-worker:0.1.0"),
            "ghcr.io/acme/aigc-worker"
        );
        assert_eq!(
            repository("localhost:5000/aigc-worker"),
            "localhost:5000/aigc-worker"
        );
        assert_eq!(repository("aigc-worker@sha256:abc"), "aigc-worker");
        assert_eq!(
            short_name("ghcr.io/acme/aigc-worker:0.1.0-cuda"),
            "aigc-worker"
        );
        assert_eq!(short_name("busybox"), "busybox");
    }

    #[test]
    fn worker_and_operator_images_of_any_registry_run_the_binaries_beside_us() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("aigc-worker"), b"").unwrap();
        let images = Images::new(Vec::new(), dir.path().to_owned());
        for image in [
            "aigc-worker",
            "ghcr.io/acme/aigc-worker:0.1.0",
            "localhost:5000/aigc-worker@sha256:ab",
        ] {
            assert_eq!(
                images.resolve(image).unwrap(),
                dir.path().join("aigc-worker"),
                "{image}"
            );
        }
        assert!(
            images
                .resolve("aigc-operator:1")
                .unwrap_err()
                .contains("cargo build --bin aigc-operator")
        );
    }

    #[test]
    fn mappings_match_by_reference_repository_or_short_name() {
        let images = Images::new(
            vec![ImageMapping::new("busybox", "/bin/sh")],
            PathBuf::from("/nonexistent"),
        );
        assert_eq!(
            images.resolve("docker.io/library/busybox:1.36").unwrap(),
            PathBuf::from("/bin/sh")
        );
        let missing = images.resolve("aigc-worker:1").unwrap_err();
        assert!(missing.contains("/nonexistent/aigc-worker"), "{missing}");
        let unknown = images.resolve("nginx:latest").unwrap_err();
        assert!(
            unknown.contains("busybox, aigc-worker, aigc-operator"),
            "{unknown}"
        );
    }
}
