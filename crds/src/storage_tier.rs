//! StorageTier: a place datasets and models can live (infrastructure layer).

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{HTTP_URL_PATTERN, Quantity, SecretRef};
use crate::condition::Condition;

/// A storage tier that Datasets and Models are placed on and migrated between.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "aigc.dev",
    version = "v1alpha1",
    kind = "StorageTier",
    plural = "storagetiers",
    shortname = "tier",
    category = "aigc",
    status = "StorageTierStatus",
    derive = "PartialEq",
    doc = "A storage tier (hot SSD cache, warm disk, cold object storage, archive) that Datasets and Models are placed on and moved between.",
    printcolumn(name = "Class", type_ = "string", json_path = ".spec.class"),
    printcolumn(
        name = "Used",
        type_ = "integer",
        format = "int64",
        json_path = ".status.usedBytes",
        description = "Bytes stored"
    ),
    printcolumn(name = "Objects", type_ = "integer", json_path = ".status.objectCount"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.retrieval) || self.class in ['cold', 'archive']").message("retrieval applies only to tiers of class cold or archive"))]
pub struct StorageTierSpec {
    /// Temperature of the tier: `hot` (node-local SSD or fast PVC), `warm` (disk), `cold`
    /// (object storage) or `archive` (objects that must be restored before reading).
    pub class: TierClass,
    /// Where the bytes are stored: exactly one of `s3` or `filesystem`.
    pub backend: TierBackend,
    /// Price of one GiB stored for one month, in the currency of your choice; used for the
    /// cost report in status.
    #[serde(
        rename = "costPerGiBMonth",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(range(min = 0.0))]
    pub cost_per_gib_month: Option<f64>,
    /// Most bytes the tier may hold, e.g. `500Gi`. The policy engine never places data beyond it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<Quantity>,
    /// How archived objects are restored before reading (cold and archive tiers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retrieval: Option<Retrieval>,
}

/// Temperature class of a StorageTier.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum TierClass {
    /// Fastest: node-local SSD or a fast PVC, used as a cache for running workloads.
    Hot,
    /// Disk-backed, cheaper than hot.
    Warm,
    /// Object storage.
    Cold,
    /// Objects that must be restored before they can be read (tape-like classes).
    Archive,
}

/// The backend of a StorageTier: exactly one of `s3` or `filesystem`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum TierBackend {
    /// An S3-compatible bucket.
    S3(S3Backend),
    /// A directory on a mounted volume.
    Filesystem(FilesystemBackend),
}

/// An S3-compatible bucket.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct S3Backend {
    /// Endpoint URL of an S3-compatible service (MinIO, Ceph, a local test server); AWS when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(HTTP_URL_PATTERN))]
    pub endpoint: Option<String>,
    /// Region of the bucket.
    #[serde(default = "default_region")]
    #[schemars(length(min = 1, max = 64))]
    pub region: String,
    /// Bucket name.
    #[schemars(pattern(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$"))]
    pub bucket: String,
    /// Key prefix inside the bucket under which the tier stores objects, e.g. `aigc/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 512))]
    pub prefix: Option<String>,
    /// S3 storage class for objects written to this tier. Archive classes (`GLACIER`,
    /// `DEEP_ARCHIVE`) need a restore before reading; see `retrieval`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class: Option<S3StorageClass>,
    /// Address buckets as `endpoint/bucket` instead of `bucket.endpoint`; most
    /// S3-compatible servers need this.
    #[serde(default)]
    pub force_path_style: bool,
    /// Secret with `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY` (and optionally
    /// `AWS_SESSION_TOKEN`); the default credential chain is used when omitted. The operator
    /// probes the bucket with these keys and probes again as soon as the Secret changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<SecretRef>,
}

fn default_region() -> String {
    "us-east-1".to_owned()
}

/// S3 storage classes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum S3StorageClass {
    /// Frequent access.
    Standard,
    /// Infrequent access.
    StandardIa,
    /// Infrequent access in one zone.
    OnezoneIa,
    /// Moved between access tiers by the provider.
    IntelligentTiering,
    /// Archive with millisecond retrieval.
    GlacierIr,
    /// Archive; objects need a restore before reading.
    Glacier,
    /// Deepest archive; restores take hours.
    DeepArchive,
}

impl S3StorageClass {
    /// Whether objects of this class must be restored before they can be read.
    pub fn needs_restore(self) -> bool {
        matches!(self, S3StorageClass::Glacier | S3StorageClass::DeepArchive)
    }
}

/// A directory on a mounted volume.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FilesystemBackend {
    /// Absolute path of the tier's root directory inside the mounted volume (or on the
    /// operator's host in local mode).
    #[schemars(pattern(r"^/"), length(max = 4096))]
    pub path: String,
    /// The volume that holds `path`: one of `persistentVolumeClaim`, `hostPath` or `nfs`.
    /// When omitted the path is used as it is on the node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<TierVolume>,
}

/// The volume behind a filesystem tier: exactly one of its fields.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum TierVolume {
    /// A PersistentVolumeClaim in the operator's namespace.
    PersistentVolumeClaim(ClaimRef),
    /// A directory on the node.
    HostPath(HostPathRef),
    /// An NFS export.
    Nfs(NfsRef),
}

/// A PersistentVolumeClaim by name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClaimRef {
    /// Name of the claim.
    #[schemars(pattern(crate::common::NAME_PATTERN), length(max = 253))]
    pub claim_name: String,
}

/// A directory on the node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct HostPathRef {
    /// Absolute path on the node.
    #[schemars(pattern(r"^/"))]
    pub path: String,
}

/// An NFS export.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct NfsRef {
    /// Host name or IP of the NFS server.
    #[schemars(length(min = 1, max = 253))]
    pub server: String,
    /// Exported path.
    #[schemars(pattern(r"^/"))]
    pub path: String,
}

/// How archived objects are restored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Retrieval {
    /// Restore speed: `Expedited`, `Standard` or `Bulk`.
    #[serde(default)]
    pub restore_tier: RestoreTier,
    /// Days a restored copy stays readable.
    #[serde(default = "default_restore_days")]
    #[schemars(range(min = 1, max = 365))]
    pub restore_days: u32,
}

fn default_restore_days() -> u32 {
    1
}

/// Speed of an archive restore.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum RestoreTier {
    /// Minutes, most expensive.
    Expedited,
    /// Hours.
    #[default]
    Standard,
    /// Many hours, cheapest.
    Bulk,
}

/// Observed state of a StorageTier.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StorageTierStatus {
    /// `Ready` says whether the last probe reached the backend.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Bytes stored by Datasets and Models on this tier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used_bytes: Option<u64>,
    /// Objects stored on this tier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_count: Option<u64>,
    /// True when the last probe stopped counting before the end of a very large S3 tier
    /// (it lists a bounded number of pages per probe): `usedBytes` and `objectCount` are
    /// then lower bounds.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub usage_partial: bool,
    /// Monthly cost of what is stored, `usedBytes` in GiB times `costPerGiBMonth`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monthly_cost: Option<f64>,
    /// When the backend was last probed, RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_probe_time: Option<String>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}
