//! Where a Dataset or Model goes and how its worker pods reach its source: the placement tier
//! (named, or the first `hot` tier), the source as a [`TierAccess`] (S3 with its endpoint and
//! credentials, a PVC mounted read-only or read-write, or a URL), and a check that one pod
//! can reach everything it needs with one set of S3 settings.
//!
//! Pure functions over plain data; the controllers read the inputs.

use aigc_crds::common::{Placement, PvcSource, S3Source};
use aigc_crds::storage_tier::{StorageTier, TierClass};
use k8s_openapi::api::core::v1::{PersistentVolumeClaimVolumeSource, Volume, VolumeMount};
use kube::ResourceExt;

use crate::layout::{TierAccess, plain_env, secret_env};

/// Where a PVC source is mounted in worker pods.
pub const SOURCE_MOUNT: &str = "/var/run/aigc/source";

/// Why a resource cannot be placed or reached; becomes a `Ready=False` condition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Blocker {
    /// CamelCase reason.
    pub reason: &'static str,
    /// What is wrong, with the names involved and what would fix it.
    pub message: String,
}

/// The tier named by `placement`, or the first tier of class `hot` by name when there is none.
pub fn placement_tier<'a>(
    placement: Option<&Placement>,
    tiers: &'a [StorageTier],
) -> Result<&'a StorageTier, Blocker> {
    match placement {
        Some(placement) => tiers
            .iter()
            .find(|t| t.name_any() == placement.tier)
            .ok_or_else(|| Blocker {
                reason: "TierNotFound",
                message: format!(
                    "spec.placement.tier: StorageTier {:?} does not exist",
                    placement.tier
                ),
            }),
        None => {
            let mut hot: Vec<&StorageTier> = tiers
                .iter()
                .filter(|t| t.spec.class == TierClass::Hot)
                .collect();
            hot.sort_by_key(|t| t.name_any());
            hot.first().copied().ok_or_else(|| Blocker {
                reason: "NoHotTier",
                message: "spec.placement is omitted and no StorageTier of class hot exists; \
                          create one or set spec.placement.tier"
                    .to_owned(),
            })
        }
    }
}

/// Access to an S3 source, with its own endpoint, region and credentials.
pub fn s3_source(source: &S3Source) -> TierAccess {
    let mut env = vec![plain_env(
        "AWS_REGION",
        source.region.as_deref().unwrap_or("us-east-1"),
    )];
    if let Some(endpoint) = &source.endpoint {
        env.push(plain_env("AWS_ENDPOINT_URL", endpoint));
    }
    if let Some(secret) = &source.credentials_secret_ref {
        for key in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"] {
            env.push(secret_env(key, &secret.name, key));
        }
    }
    TierAccess {
        tier: "source".to_owned(),
        root_uri: source.uri.trim_end_matches('/').to_owned(),
        volume: None,
        mount: None,
        env,
    }
}

/// Access to a PVC source, mounted at [`SOURCE_MOUNT`]; `writable` where the worker records a
/// manifest next to the files (model imports).
pub fn pvc_source(source: &PvcSource, writable: bool) -> TierAccess {
    let path = source.path.trim_end_matches('/');
    TierAccess {
        tier: "source".to_owned(),
        root_uri: format!("file://{SOURCE_MOUNT}{path}"),
        volume: Some(Volume {
            name: "source".to_owned(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: source.claim_name.clone(),
                read_only: Some(!writable),
            }),
            ..Volume::default()
        }),
        mount: Some(VolumeMount {
            name: "source".to_owned(),
            mount_path: SOURCE_MOUNT.to_owned(),
            read_only: Some(!writable),
            ..VolumeMount::default()
        }),
        env: Vec::new(),
    }
}

/// Access to a file over HTTP(S): just its URL.
pub fn url_source(url: &str) -> TierAccess {
    TierAccess {
        tier: "source".to_owned(),
        root_uri: url.to_owned(),
        volume: None,
        mount: None,
        env: Vec::new(),
    }
}

/// Check that one worker pod can reach all of `accesses`: the worker has one set of S3
/// settings (the standard AWS variables), so two S3 locations must agree on them.
pub fn check_one_s3_endpoint(accesses: &[&TierAccess]) -> Result<(), Blocker> {
    for (i, a) in accesses.iter().enumerate() {
        for b in &accesses[i + 1..] {
            for var in &a.env {
                if let Some(other) = b.env.iter().find(|e| e.name == var.name)
                    && other != var
                {
                    let show =
                        |e: &k8s_openapi::api::core::v1::EnvVar| match (&e.value, &e.value_from) {
                            (Some(v), _) => format!("{v:?}"),
                            (None, Some(from)) => from
                                .secret_key_ref
                                .as_ref()
                                .map(|s| format!("Secret {:?}", s.name))
                                .unwrap_or_else(|| "a reference".to_owned()),
                            (None, None) => "unset".to_owned(),
                        };
                    return Err(Blocker {
                        reason: "ConflictingS3Settings",
                        message: format!(
                            "{} ({}) and {} ({}) need different {}: {} and {}; one worker pod \
                             uses one S3 endpoint, region and credentials, so place the data on \
                             a tier with the same settings as its source",
                            a.tier,
                            a.root_uri,
                            b.tier,
                            b.root_uri,
                            var.name,
                            show(var),
                            show(other)
                        ),
                    });
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use aigc_crds::storage_tier::StorageTierSpec;

    fn tier(name: &str, class: &str) -> StorageTier {
        let spec: StorageTierSpec = serde_json::from_value(serde_json::json!({
            "class": class, "backend": {"filesystem": {"path": format!("/tiers/{name}")}}
        }))
        .unwrap();
        StorageTier::new(name, spec)
    }

    #[test]
    fn the_named_tier_or_the_first_hot_one_is_chosen() {
        let tiers = [
            tier("z-hot", "hot"),
            tier("cold", "cold"),
            tier("a-hot", "hot"),
        ];
        assert_eq!(placement_tier(None, &tiers).unwrap().name_any(), "a-hot");
        let cold = Placement {
            tier: "cold".into(),
        };
        assert_eq!(
            placement_tier(Some(&cold), &tiers).unwrap().name_any(),
            "cold"
        );
        let missing = Placement {
            tier: "nvme".into(),
        };
        let err = placement_tier(Some(&missing), &tiers).unwrap_err();
        assert_eq!(err.reason, "TierNotFound");
        assert!(err.message.contains("\"nvme\""), "{}", err.message);
        let err = placement_tier(None, &tiers[1..2]).unwrap_err();
        assert_eq!(err.reason, "NoHotTier");
    }

    #[test]
    fn pvc_sources_mount_the_claim_and_point_inside_it() {
        let access = pvc_source(
            &PvcSource {
                claim_name: "raw".into(),
                path: "/reviews/".into(),
            },
            false,
        );
        assert_eq!(access.root_uri, "file:///var/run/aigc/source/reviews");
        let volume = access.volume.unwrap();
        let claim = volume.persistent_volume_claim.unwrap();
        assert_eq!(
            (claim.claim_name.as_str(), claim.read_only),
            ("raw", Some(true))
        );
        let root = pvc_source(
            &PvcSource {
                claim_name: "raw".into(),
                path: "/".into(),
            },
            true,
        );
        assert_eq!(root.root_uri, "file:///var/run/aigc/source");
    }

    #[test]
    fn two_s3_locations_must_share_their_settings() {
        let source = |endpoint: &str| {
            s3_source(&S3Source {
                uri: "s3://raw-data/reviews/".into(),
                endpoint: Some(endpoint.into()),
                region: None,
                credentials_secret_ref: None,
            })
        };
        let a = source("http://127.0.0.1:9000");
        assert_eq!(a.root_uri, "s3://raw-data/reviews");
        assert!(check_one_s3_endpoint(&[&a, &source("http://127.0.0.1:9000")]).is_ok());
        let err = check_one_s3_endpoint(&[&a, &source("http://other:9000")]).unwrap_err();
        assert_eq!(err.reason, "ConflictingS3Settings");
        assert!(
            err.message.contains("AWS_ENDPOINT_URL") && err.message.contains("http://other:9000"),
            "{}",
            err.message
        );
        let fs = pvc_source(
            &PvcSource {
                claim_name: "raw".into(),
                path: "/".into(),
            },
            false,
        );
        assert!(check_one_s3_endpoint(&[&a, &fs]).is_ok());
    }
}
