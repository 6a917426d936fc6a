//! Where a Dataset or Model lives on a StorageTier, and how a worker pod reaches it.
//!
//! A filesystem tier is mounted into worker pods at its `path`; an S3 tier is reached over the
//! network with the tier's endpoint and credentials. Either way the worker gets one URI
//! (`file:///...` or `s3://bucket/prefix/...`) per resource; the worker knows nothing about
//! tiers. This module decides names and mounts only; it never touches the data.

use aigc_crds::storage_tier::{StorageTier, TierBackend, TierVolume};
use k8s_openapi::api::core::v1::{
    EnvVar, EnvVarSource, HostPathVolumeSource, NFSVolumeSource, PersistentVolumeClaimVolumeSource,
    SecretKeySelector, Volume, VolumeMount,
};
use kube::ResourceExt;

/// What kind of object is stored; the first path segment under the tier root.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoredKind {
    /// Prepared dataset shards and their manifest.
    Dataset,
    /// Model artifacts and their manifest.
    Model,
    /// Training checkpoints.
    Checkpoint,
}

impl StoredKind {
    fn segment(self) -> &'static str {
        match self {
            StoredKind::Dataset => "datasets",
            StoredKind::Model => "models",
            StoredKind::Checkpoint => "checkpoints",
        }
    }
}

/// How a worker pod reaches one StorageTier.
#[derive(Clone, Debug, PartialEq)]
pub struct TierAccess {
    /// Name of the StorageTier.
    pub tier: String,
    /// `file:///root` or `s3://bucket/prefix`, without a trailing slash.
    pub root_uri: String,
    /// Volume to add to the pod (filesystem tiers).
    pub volume: Option<Volume>,
    /// Where to mount it (filesystem tiers).
    pub mount: Option<VolumeMount>,
    /// Environment for the S3 client (S3 tiers).
    pub env: Vec<EnvVar>,
}

impl TierAccess {
    /// The access a worker pod needs for `tier`. S3 credentials are referenced from the Secret
    /// named by the tier's `credentialsSecretRef`, which must exist in the pod's namespace.
    pub fn for_tier(tier: &StorageTier) -> TierAccess {
        let name = tier.name_any();
        match &tier.spec.backend {
            TierBackend::Filesystem(fs) => {
                let root = fs.path.trim_end_matches('/');
                let volume_name = volume_name(&name);
                let mut volume = Volume {
                    name: volume_name.clone(),
                    ..Volume::default()
                };
                match &fs.volume {
                    Some(TierVolume::PersistentVolumeClaim(claim)) => {
                        volume.persistent_volume_claim = Some(PersistentVolumeClaimVolumeSource {
                            claim_name: claim.claim_name.clone(),
                            read_only: None,
                        });
                    }
                    Some(TierVolume::Nfs(nfs)) => {
                        volume.nfs = Some(NFSVolumeSource {
                            server: nfs.server.clone(),
                            path: nfs.path.clone(),
                            read_only: None,
                        });
                    }
                    Some(TierVolume::HostPath(host)) => {
                        volume.host_path = Some(HostPathVolumeSource {
                            path: host.path.clone(),
                            type_: Some("DirectoryOrCreate".to_owned()),
                        });
                    }
                    None => {
                        volume.host_path = Some(HostPathVolumeSource {
                            path: fs.path.clone(),
                            type_: Some("DirectoryOrCreate".to_owned()),
                        });
                    }
                }
                TierAccess {
                    tier: name,
                    root_uri: format!("file://{root}"),
                    mount: Some(VolumeMount {
                        name: volume_name,
                        mount_path: fs.path.clone(),
                        ..VolumeMount::default()
                    }),
                    volume: Some(volume),
                    env: Vec::new(),
                }
            }
            TierBackend::S3(s3) => {
                let prefix = s3.prefix.as_deref().unwrap_or("").trim_matches('/');
                let root_uri = if prefix.is_empty() {
                    format!("s3://{}", s3.bucket)
                } else {
                    format!("s3://{}/{prefix}", s3.bucket)
                };
                let mut env = vec![plain_env("AWS_REGION", &s3.region)];
                if let Some(endpoint) = &s3.endpoint {
                    env.push(plain_env("AWS_ENDPOINT_URL", endpoint));
                }
                if s3.force_path_style {
                    env.push(plain_env("AWS_S3_FORCE_PATH_STYLE", "true"));
                }
                if let Some(secret) = &s3.credentials_secret_ref {
                    for key in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"] {
                        env.push(secret_env(key, &secret.name, key));
                    }
                }
                TierAccess {
                    tier: name,
                    root_uri,
                    volume: None,
                    mount: None,
                    env,
                }
            }
        }
    }

    /// URI of one stored object set, e.g.
    /// `file:///var/lib/aigc/tiers/hot/models/default/chat/1.0.0`.
    pub fn uri(&self, kind: StoredKind, namespace: &str, name: &str, version: &str) -> String {
        format!(
            "{}/{}/{namespace}/{name}/{version}",
            self.root_uri,
            kind.segment()
        )
    }
}

fn volume_name(tier: &str) -> String {
    // Volume names are DNS labels; tier names are subdomains and may contain dots.
    let mut name = format!("tier-{}", tier.replace('.', "-"));
    name.truncate(63);
    name.trim_end_matches('-').to_owned()
}

pub(crate) fn plain_env(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: Some(value.to_owned()),
        value_from: None,
    }
}

pub(crate) fn secret_env(name: &str, secret: &str, key: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: None,
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.to_owned(),
                key: key.to_owned(),
                optional: Some(false),
            }),
            ..EnvVarSource::default()
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aigc_crds::storage_tier::StorageTierSpec;

    fn tier(name: &str, spec: serde_json::Value) -> StorageTier {
        let spec: StorageTierSpec = serde_json::from_value(spec).unwrap();
        StorageTier::new(name, spec)
    }

    #[test]
    fn filesystem_tiers_are_mounted_at_their_path() {
        let t = tier(
            "hot.local",
            serde_json::json!({"class": "hot", "backend": {"filesystem": {"path": "/data/hot/", "volume": {"persistentVolumeClaim": {"claimName": "fast"}}}}}),
        );
        let access = TierAccess::for_tier(&t);
        assert_eq!(
            access.uri(StoredKind::Model, "ns", "chat", "1.0.0"),
            "file:///data/hot/models/ns/chat/1.0.0"
        );
        let volume = access.volume.unwrap();
        assert_eq!(volume.name, "tier-hot-local");
        assert_eq!(volume.persistent_volume_claim.unwrap().claim_name, "fast");
        assert_eq!(access.mount.unwrap().mount_path, "/data/hot/");
    }

    #[test]
    fn a_filesystem_tier_without_volume_uses_the_node_path() {
        let t = tier(
            "hot",
            serde_json::json!({"class": "hot", "backend": {"filesystem": {"path": "/srv/tier"}}}),
        );
        let volume = TierAccess::for_tier(&t).volume.unwrap();
        assert_eq!(volume.host_path.unwrap().path, "/srv/tier");
    }

    #[test]
    fn s3_tiers_get_a_uri_and_client_environment() {
        let t = tier(
            "cold",
            serde_json::json!({"class": "cold", "backend": {"s3": {
                "bucket": "archive", "prefix": "/aigc/", "endpoint": "http://minio:9000",
                "forcePathStyle": true, "credentialsSecretRef": {"name": "s3-creds"}}}}),
        );
        let access = TierAccess::for_tier(&t);
        assert!(access.volume.is_none());
        assert_eq!(
            access.uri(StoredKind::Dataset, "default", "d", "v1"),
            "s3://archive/aigc/datasets/default/d/v1"
        );
        let names: Vec<&str> = access.env.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "AWS_REGION",
                "AWS_ENDPOINT_URL",
                "AWS_S3_FORCE_PATH_STYLE",
                "AWS_ACCESS_KEY_ID",
                "AWS_SECRET_ACCESS_KEY"
            ]
        );
        let secret = access.env[3]
            .value_from
            .as_ref()
            .unwrap()
            .secret_key_ref
            .as_ref()
            .unwrap();
        assert_eq!(
            (secret.name.as_str(), secret.key.as_str()),
            ("s3-creds", "AWS_ACCESS_KEY_ID")
        );
        assert!(
            access.env[3].value.is_none(),
            "credentials are referenced, never copied into the spec"
        );
    }
}
