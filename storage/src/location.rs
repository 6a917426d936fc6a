//! Where a tier is, as plain data: parsed from `file:///abs/dir` and `s3://bucket/prefix`
//! URIs and compared by the migration planner without touching any backend.

use std::fmt;
use std::path::{Component, Path, PathBuf};

use crate::{Error, Result};

/// The place a tier keeps its objects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    /// A directory; keys are paths below it.
    Filesystem {
        /// Absolute, without `.` or `..` components.
        root: PathBuf,
    },
    /// A bucket and key prefix on an S3-compatible service.
    S3 {
        /// Endpoint URL; `None` is AWS.
        endpoint: Option<String>,
        /// Bucket name.
        bucket: String,
        /// Key prefix, empty or ending in `/`.
        prefix: String,
    },
}

impl Location {
    /// Parse `file:///abs/dir` or `s3://bucket/prefix`.
    pub fn parse(uri: &str) -> Result<Location> {
        let bad = |reason: &str| Error::InvalidUri {
            uri: uri.to_owned(),
            reason: reason.to_owned(),
        };
        if let Some(path) = uri.strip_prefix("file://") {
            if !path.starts_with('/') {
                return Err(bad("the path must be absolute (file:///abs/dir)"));
            }
            let root = Path::new(path);
            if root
                .components()
                .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
            {
                return Err(bad("the path must not contain '.' or '..' components"));
            }
            return Ok(Location::Filesystem {
                root: root.components().collect(),
            });
        }
        if let Some(rest) = uri.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if !is_bucket_name(bucket) {
                return Err(bad(
                    "the bucket name must be 3-63 characters of a-z, 0-9, '.' and '-'",
                ));
            }
            let prefix = prefix.trim_end_matches('/');
            if !prefix.is_empty() {
                crate::check_key(prefix).map_err(|e| bad(&format!("bad prefix: {e}")))?;
            }
            return Ok(Location::S3 {
                endpoint: None,
                bucket: bucket.to_owned(),
                prefix: if prefix.is_empty() {
                    String::new()
                } else {
                    format!("{prefix}/")
                },
            });
        }
        Err(bad("unknown scheme"))
    }

    /// Whether the two locations could hold the same objects (one inside the other).
    pub fn overlaps(&self, other: &Location) -> bool {
        match (self, other) {
            (Location::Filesystem { root: a }, Location::Filesystem { root: b }) => {
                a.starts_with(b) || b.starts_with(a)
            }
            (
                Location::S3 {
                    endpoint: ea,
                    bucket: ba,
                    prefix: pa,
                },
                Location::S3 {
                    endpoint: eb,
                    bucket: bb,
                    prefix: pb,
                },
            ) => {
                ea == eb && ba == bb && (pa.starts_with(pb.as_str()) || pb.starts_with(pa.as_str()))
            }
            _ => false,
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Filesystem { root } => write!(f, "file://{}", root.display()),
            Location::S3 { bucket, prefix, .. } => write!(f, "s3://{bucket}/{prefix}"),
        }
    }
}

fn is_bucket_name(name: &str) -> bool {
    (3..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
        && !name.starts_with(['.', '-'])
        && !name.ends_with(['.', '-'])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_schemes() {
        assert_eq!(
            Location::parse("file:///data/hot/").unwrap(),
            Location::Filesystem {
                root: "/data/hot".into()
            }
        );
        assert_eq!(
            Location::parse("s3://cold-bucket/datasets/imdb").unwrap(),
            Location::S3 {
                endpoint: None,
                bucket: "cold-bucket".into(),
                prefix: "datasets/imdb/".into()
            }
        );
        assert_eq!(
            Location::parse("s3://cold-bucket").unwrap().to_string(),
            "s3://cold-bucket/"
        );
    }

    #[test]
    fn rejects_relative_escaping_and_unknown_uris() {
        for (uri, why) in [
            ("file://data", "absolute"),
            ("file:///data/../etc", "'..'"),
            ("s3://Bad_Bucket/x", "bucket name"),
            ("s3://bucket/a/../b", "bad prefix"),
            ("http://x/y", "unknown scheme"),
        ] {
            let err = Location::parse(uri).unwrap_err().to_string();
            assert!(err.contains(why) && err.contains(uri), "{uri}: {err}");
        }
    }

    #[test]
    fn overlap_is_by_containment() {
        let p = |u: &str| Location::parse(u).unwrap();
        assert!(p("file:///a/b").overlaps(&p("file:///a")));
        assert!(!p("file:///a/b").overlaps(&p("file:///a/bc")));
        assert!(p("s3://bkt/x/").overlaps(&p("s3://bkt/x/y")));
        assert!(!p("s3://bkt/x").overlaps(&p("s3://bkt/xy")));
        assert!(!p("s3://bkt/x").overlaps(&p("file:///x")));
    }
}
