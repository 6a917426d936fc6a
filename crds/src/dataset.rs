//! Dataset: governed training data placed on a StorageTier (data layer).

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{
    HTTP_URL_PATTERN, Lifecycle, LocalObjectRef, Placement, PvcSource, S3Source, SHA256_PATTERN,
};
use crate::condition::Condition;

/// A dataset ingested from S3, HTTP or a PVC, validated, cleaned and placed on a storage tier.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "aigc.dev",
    version = "v1alpha1",
    kind = "Dataset",
    plural = "datasets",
    namespaced,
    shortname = "dset",
    category = "aigc",
    status = "DatasetStatus",
    derive = "PartialEq",
    doc = "A dataset ingested from S3, HTTP or a PVC, validated against a schema, cleaned, checksummed and placed on a StorageTier.",
    printcolumn(name = "Tier", type_ = "string", json_path = ".status.tier"),
    printcolumn(name = "Rows", type_ = "integer", json_path = ".status.rows"),
    printcolumn(
        name = "Bytes",
        type_ = "integer",
        format = "int64",
        json_path = ".status.bytes"
    ),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.schema) || self.format in ['csv', 'jsonl', 'parquet']").message("schema applies only to the tabular formats csv, jsonl and parquet"))]
pub struct DatasetSpec {
    /// Where the raw data comes from: exactly one of `s3`, `http` or `pvc`.
    pub source: DatasetSource,
    /// Format of the raw data: `jsonl`, `csv`, `text`, `parquet` or `images`.
    pub format: DataFormat,
    /// Columns each row must have (tabular formats only). Rows that break it are rejected,
    /// or dropped when `cleaning.dropInvalidRows` is true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<DataSchema>,
    /// Cleaning applied while preparing the data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cleaning: Option<Cleaning>,
    /// StorageTier to hold the prepared data. When omitted the operator uses a tier of
    /// class `hot`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<Placement>,
    /// When the data moves between tiers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifecycle: Option<Lifecycle>,
}

/// Where a Dataset's raw data comes from: exactly one of `s3`, `http` or `pvc`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum DatasetSource {
    /// Objects in S3-compatible storage.
    S3(S3Source),
    /// One file over HTTP(S).
    Http(HttpSource),
    /// Files on a PersistentVolumeClaim.
    Pvc(PvcSource),
}

/// One file over HTTP(S).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct HttpSource {
    /// URL of the file.
    #[schemars(pattern(HTTP_URL_PATTERN))]
    pub url: String,
    /// Expected SHA-256 of the file, lowercase hex; the download fails when it differs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(SHA256_PATTERN))]
    pub sha256: Option<String>,
}

/// Format of a Dataset's raw data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DataFormat {
    /// One JSON object per line.
    Jsonl,
    /// Comma-separated values with a header row.
    Csv,
    /// Plain text, one document per file.
    Text,
    /// Apache Parquet files.
    Parquet,
    /// Image files.
    Images,
}

/// Columns each row must have.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DataSchema {
    /// The columns, unique by name.
    #[schemars(length(min = 1, max = 4096))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub columns: Vec<Column>,
}

/// One column of a tabular Dataset.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[x_kube(validation = Rule::new("!has(self.minimum) || !has(self.maximum) || self.minimum <= self.maximum").message("minimum must not exceed maximum"))]
#[x_kube(validation = Rule::new("(!has(self.minimum) && !has(self.maximum)) || self.type in ['integer', 'number']").message("minimum and maximum apply only to integer and number columns"))]
pub struct Column {
    /// Column name as it appears in the CSV header or JSON object.
    #[schemars(length(min = 1, max = 256))]
    pub name: String,
    /// Value type: `string`, `integer`, `number`, `boolean` or `timestamp` (RFC 3339).
    #[serde(rename = "type")]
    pub type_: ColumnType,
    /// Whether every row must have a value.
    #[serde(default)]
    pub required: bool,
    /// Smallest accepted value of a numeric column.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minimum: Option<f64>,
    /// Largest accepted value of a numeric column.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maximum: Option<f64>,
}

/// Value type of a column.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ColumnType {
    /// Any text.
    String,
    /// A whole number.
    Integer,
    /// Any number.
    Number,
    /// `true` or `false`.
    Boolean,
    /// An RFC 3339 timestamp.
    Timestamp,
}

/// Cleaning applied while preparing a Dataset.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Cleaning {
    /// Drop rows that break the schema instead of failing the preparation.
    #[serde(default = "default_true")]
    pub drop_invalid_rows: bool,
    /// Drop rows whose content repeats an earlier row.
    #[serde(default)]
    pub dedupe: bool,
    /// Drop rows longer than this many bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_row_bytes: Option<u64>,
}

fn default_true() -> bool {
    true
}

/// Lifecycle phase of a Dataset.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum DatasetPhase {
    /// Waiting for its tier or source.
    Pending,
    /// The prepare job is validating and cleaning the data.
    Preparing,
    /// Prepared and readable on `status.tier`.
    Ready,
    /// Being moved to another tier; still readable on `status.tier`.
    Migrating,
    /// Preparation failed; see the conditions.
    Failed,
}

/// Which workloads produced and used a Dataset.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Lineage {
    /// The TrainingJob or process that produced this data, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub produced_by: Option<LocalObjectRef>,
    /// TrainingJobs that have read this data.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub consumed_by: Vec<LocalObjectRef>,
}

/// Observed state of a Dataset.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DatasetStatus {
    /// `Pending`, `Preparing`, `Ready`, `Migrating` or `Failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<DatasetPhase>,
    /// `Ready`, `Validated` and `Migrating`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// StorageTier that holds the prepared data now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
    /// Number of objects (shards) of the prepared data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub objects: Option<u64>,
    /// Total bytes of the prepared data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// Rows after cleaning (tabular and text formats).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<u64>,
    /// `sha256:` digest of the manifest: the content identity of this version of the data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest_digest: Option<String>,
    /// Version of the prepared data: a hash of the spec fields that shape it (source, format,
    /// schema, cleaning), and its directory under `datasets/<namespace>/<name>/` on the tier.
    /// A spec change that alters it prepares the data again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// When a workload last read the data, RFC 3339; drives `lifecycle.demoteAfter`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_access_time: Option<String>,
    /// Producer and consumers of the data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lineage: Option<Lineage>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}
