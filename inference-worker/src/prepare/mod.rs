//! `aigc-worker prepare`: dataset governance. Streams a raw source, checks each row against the
//! schema, cleans (drops invalid rows, duplicates and oversized rows), writes cleaned shards
//! with their manifest, and reports statistics.
//!
//! Memory stays flat in the input size: rows are read, checked and written one at a time. The
//! only state that grows is the duplicate filter (16 bytes per distinct row, only with
//! `dedupe`).
//!
//! Output layout (all listed in `manifest.json`):
//! - `data/part-NNNNN.csv` (csv and jsonl input: a header row, then the schema's columns in
//!   schema order, values normalised) or `data/part-NNNNN.txt` (text input);
//! - `dataset.json`: the format and schema the trainer reads;
//! - `stats.json`: the [`Report`], which the operator copies into the Dataset's status.

mod source;
pub mod validate;

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use aigc_crds::dataset::{Column, DataSchema};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::objects;
use crate::{Result, WorkerError};
use validate::{Checked, Reject};
pub use validate::{ColumnStats, RejectReason};

/// Object key of the dataset descriptor.
pub const DATASET_KEY: &str = "dataset.json";
/// Object key of the statistics report.
pub const STATS_KEY: &str = "stats.json";
/// How many rejected rows the report quotes.
const REJECT_SAMPLES: usize = 20;
/// Longest row read when no `max_row_bytes` is set; longer rows are rejected unread.
pub const DEFAULT_ROW_LIMIT: u64 = 16 << 20;

/// Format of the raw data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum InputFormat {
    /// One JSON object per line.
    Jsonl,
    /// Comma-separated values with a header row.
    Csv,
    /// Plain text; each line is a row.
    Text,
}

/// What `prepare` reads, how it cleans and where it writes.
#[derive(Clone, Debug)]
pub struct PrepareOptions {
    /// A file or a directory of files (read in name order).
    pub source: String,
    /// Format of the source.
    pub format: InputFormat,
    /// Columns each row must have; required for csv and jsonl.
    pub schema: Option<DataSchema>,
    /// Directory to publish the prepared dataset to.
    pub out: String,
    /// Drop rows that break the schema; when false the first such row fails the run.
    pub drop_invalid_rows: bool,
    /// Drop rows whose normalised content repeats an earlier row.
    pub dedupe: bool,
    /// Drop rows longer than this many bytes.
    pub max_row_bytes: Option<u64>,
    /// Start a new shard once one reaches this many bytes.
    pub shard_bytes: u64,
}

/// What the dataset's files are, written as `dataset.json` for the trainer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DatasetDescriptor {
    /// `csv` for tabular data (shards are CSV whatever the input was) or `text`.
    pub format: InputFormat,
    /// The schema rows were checked against (tabular only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<DataSchema>,
    /// Shard keys in order.
    pub shards: Vec<String>,
}

/// One quoted rejected row.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RejectSample {
    /// 1-based row number in the source (CSV data rows, JSONL and text lines).
    pub row: u64,
    /// Source file.
    pub file: String,
    /// Why.
    pub reason: RejectReason,
    /// What was wrong.
    pub message: String,
}

/// The statistics report: what came in, what was dropped and why, what went out.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// Rows read.
    pub rows_in: u64,
    /// Rows written.
    pub rows_out: u64,
    /// Dropped rows by reason.
    pub rejected: BTreeMap<RejectReason, u64>,
    /// The first rejected rows, with their messages.
    pub reject_samples: Vec<RejectSample>,
    /// Per-column statistics of the rows written.
    pub columns: Vec<ColumnStats>,
    /// Source columns that are not in the schema and were left out.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ignored_columns: Vec<String>,
    /// Shards written.
    pub shards: u64,
    /// Bytes of the published objects.
    pub bytes: u64,
    /// `sha256:` digest of the manifest, when published.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub manifest_digest: Option<String>,
    /// Why the run failed; nothing is published when set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Report {
    /// Whether the dataset was published.
    pub fn succeeded(&self) -> bool {
        self.error.is_none()
    }

    fn reject(&mut self, file: &Path, row: u64, reject: Reject) {
        *self.rejected.entry(reject.reason).or_default() += 1;
        if self.reject_samples.len() < REJECT_SAMPLES {
            self.reject_samples.push(RejectSample {
                row,
                file: file.display().to_string(),
                reason: reject.reason,
                message: reject.message,
            });
        }
    }
}

/// Run `prepare`. Always returns a report; `report.error` says why nothing was published.
pub fn prepare(options: &PrepareOptions) -> Report {
    let mut report = Report::default();
    let mut staging = None;
    let result = run(options, &mut report, &mut staging);
    if let Err(e) = result {
        report.error = Some(e.to_string());
        report.manifest_digest = None;
        if let Some(dir) = staging {
            // Best effort: a leftover staging directory is hidden and never read.
            let _ = fs::remove_dir_all(dir);
        }
    }
    report
}

fn run(options: &PrepareOptions, report: &mut Report, staging: &mut Option<PathBuf>) -> Result<()> {
    let schema = match (options.format, &options.schema) {
        (InputFormat::Text, _) => None,
        (_, Some(schema)) => {
            check_schema(schema)?;
            Some(schema)
        }
        (format, None) => {
            return Err(WorkerError::InvalidArgument(format!(
                "--schema is required for format {format:?}; it lists the columns each row must have"
            )));
        }
    };
    let target = objects::Output::parse(&options.out)?;
    target.check_unpublished()?;
    let inputs = source::input_files(&objects::local_copy(&options.source)?)?;
    let dir = target.staging_dir()?;
    *staging = Some(dir.clone());
    fs::create_dir_all(dir.join("data"))
        .map_err(|e| WorkerError::io(format!("creating {}", dir.join("data").display()), e))?;

    report.columns = schema
        .map(|s| s.columns.iter().map(ColumnStats::new).collect())
        .unwrap_or_default();
    let extension = if schema.is_some() { "csv" } else { "txt" };
    let mut shards = ShardWriter::new(&dir, extension, options.shard_bytes, schema);
    let mut seen = HashSet::new();
    let row_limit = options.max_row_bytes.unwrap_or(DEFAULT_ROW_LIMIT);

    for input in &inputs {
        let mut rows = source::RowReader::open(input, options.format, schema, row_limit)?;
        while let Some(row) = rows.next_row()? {
            report.rows_in += 1;
            let values = match row.values {
                Ok(values) => values,
                Err(reject) => {
                    if !options.drop_invalid_rows && reject.reason != RejectReason::TooLong {
                        return Err(WorkerError::InvalidData(format!(
                            "{} row {}: {} (drop invalid rows to skip such rows)",
                            input.display(),
                            row.number,
                            reject.message
                        )));
                    }
                    report.reject(input, row.number, reject);
                    continue;
                }
            };
            if let Some(limit) = options.max_row_bytes
                && row.bytes > limit
            {
                let message = format!("row has {} bytes; the limit is {limit}", row.bytes);
                report.reject(
                    input,
                    row.number,
                    Reject::new(RejectReason::TooLong, message),
                );
                continue;
            }
            if options.dedupe && !seen.insert(content_hash(&values)) {
                let message = "same content as an earlier row".to_owned();
                report.reject(
                    input,
                    row.number,
                    Reject::new(RejectReason::Duplicate, message),
                );
                continue;
            }
            for (stats, value) in report.columns.iter_mut().zip(&values) {
                stats.observe(value.as_ref());
            }
            shards.write(&values)?;
            report.rows_out += 1;
        }
        for name in rows.ignored_columns() {
            if !report.ignored_columns.contains(name) {
                report.ignored_columns.push(name.clone());
            }
        }
    }
    if report.rows_out == 0 {
        return Err(WorkerError::InvalidData(if report.rows_in == 0 {
            "the source has no rows; an empty dataset is not published".to_owned()
        } else {
            format!(
                "all {} rows were rejected ({}); nothing is published",
                report.rows_in,
                report
                    .rejected
                    .iter()
                    .map(|(r, n)| format!(
                        "{}: {n}",
                        serde_json::to_string(r)
                            .unwrap_or_default()
                            .trim_matches('"')
                    ))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }));
    }
    let shard_keys = shards.finish()?;
    report.shards = shard_keys.len() as u64;
    let descriptor = DatasetDescriptor {
        format: if schema.is_some() {
            InputFormat::Csv
        } else {
            InputFormat::Text
        },
        schema: schema.cloned(),
        shards: shard_keys.clone(),
    };
    write_json(&dir.join(DATASET_KEY), &descriptor)?;
    write_json(&dir.join(STATS_KEY), &*report)?;
    let mut keys = shard_keys;
    keys.push(DATASET_KEY.into());
    keys.push(STATS_KEY.into());
    let manifest = objects::write_manifest(&dir, &keys)?;
    target.publish(&dir, &manifest)?;
    *staging = None;
    report.bytes = manifest.total_bytes;
    report.manifest_digest = Some(manifest.digest());
    Ok(())
}

fn check_schema(schema: &DataSchema) -> Result<()> {
    let mut names = HashSet::new();
    if schema.columns.is_empty() {
        return Err(WorkerError::InvalidArgument(
            "the schema has no columns".into(),
        ));
    }
    for c in &schema.columns {
        if !names.insert(c.name.as_str()) {
            return Err(WorkerError::InvalidArgument(format!(
                "the schema lists column {:?} twice",
                c.name
            )));
        }
        if let (Some(min), Some(max)) = (c.minimum, c.maximum)
            && min > max
        {
            return Err(WorkerError::InvalidArgument(format!(
                "schema column {:?}: minimum {min} exceeds maximum {max}",
                c.name
            )));
        }
    }
    Ok(())
}

/// Read a schema file: YAML or JSON with a `columns` list, as in a Dataset's `spec.schema`.
pub fn read_schema(path: &Path) -> Result<DataSchema> {
    let text = fs::read_to_string(path)
        .map_err(|e| WorkerError::io(format!("reading schema {}", path.display()), e))?;
    serde_yaml::from_str(&text).map_err(|e| {
        WorkerError::InvalidArgument(format!(
            "schema {}: {e}; expected `columns: [{{name, type, required, minimum, maximum}}]`",
            path.display()
        ))
    })
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(value).expect("reports always serialise");
    fs::write(path, bytes).map_err(|e| WorkerError::io(format!("writing {}", path.display()), e))
}

fn content_hash(values: &[Option<Checked>]) -> u128 {
    let mut h = Sha256::new();
    for v in values {
        match v {
            None => h.update([0u8]),
            Some(c) => {
                h.update([1u8]);
                h.update((c.text.len() as u64).to_le_bytes());
                h.update(c.text.as_bytes());
            }
        }
    }
    u128::from_le_bytes(h.finalize()[..16].try_into().expect("16 bytes"))
}

/// Writes rows to numbered shards, starting a new one past `shard_bytes`.
struct ShardWriter<'a> {
    dir: PathBuf,
    extension: &'static str,
    shard_bytes: u64,
    schema: Option<&'a DataSchema>,
    current: Option<(BufWriter<fs::File>, u64)>,
    keys: Vec<String>,
}

impl<'a> ShardWriter<'a> {
    fn new(
        dir: &Path,
        extension: &'static str,
        shard_bytes: u64,
        schema: Option<&'a DataSchema>,
    ) -> Self {
        ShardWriter {
            dir: dir.to_path_buf(),
            extension,
            shard_bytes: shard_bytes.max(1),
            schema,
            current: None,
            keys: Vec::new(),
        }
    }

    fn write(&mut self, values: &[Option<Checked>]) -> Result<()> {
        if self
            .current
            .as_ref()
            .is_some_and(|(_, n)| *n >= self.shard_bytes)
        {
            self.close_current()?;
        }
        if self.current.is_none() {
            let key = format!("data/part-{:05}.{}", self.keys.len(), self.extension);
            let path = self.dir.join(&key);
            let file = fs::File::create(&path)
                .map_err(|e| WorkerError::io(format!("creating {}", path.display()), e))?;
            let mut w = BufWriter::new(file);
            let mut written = 0;
            if let Some(schema) = self.schema {
                let header: Vec<&str> = schema
                    .columns
                    .iter()
                    .map(|c: &Column| c.name.as_str())
                    .collect();
                written += write_csv_line(&mut w, header.iter().copied())?;
            }
            self.keys.push(key);
            self.current = Some((w, written));
        }
        let (w, n) = self.current.as_mut().expect("opened above");
        *n += if self.schema.is_some() {
            write_csv_line(
                w,
                values
                    .iter()
                    .map(|v| v.as_ref().map_or("", |c| c.text.as_str())),
            )?
        } else {
            let text = values
                .first()
                .and_then(|v| v.as_ref())
                .map_or("", |c| c.text.as_str());
            w.write_all(text.as_bytes())
                .and_then(|_| w.write_all(b"\n"))
                .map_err(|e| WorkerError::io("writing a text shard", e))?;
            text.len() as u64 + 1
        };
        Ok(())
    }

    fn close_current(&mut self) -> Result<()> {
        if let Some((mut w, _)) = self.current.take() {
            w.flush()
                .map_err(|e| WorkerError::io("flushing a shard", e))?;
            w.get_ref()
                .sync_all()
                .map_err(|e| WorkerError::io("syncing a shard", e))?;
        }
        Ok(())
    }

    fn finish(mut self) -> Result<Vec<String>> {
        self.close_current()?;
        Ok(std::mem::take(&mut self.keys))
    }
}

/// Write one CSV line, quoting fields that need it; returns the bytes written.
fn write_csv_line<'s>(w: &mut impl Write, fields: impl Iterator<Item = &'s str>) -> Result<u64> {
    let mut line = String::new();
    for (i, f) in fields.enumerate() {
        if i > 0 {
            line.push(',');
        }
        if f.contains([',', '"', '\n', '\r']) || f.starts_with(' ') || f.ends_with(' ') {
            line.push('"');
            line.push_str(&f.replace('"', "\"\""));
            line.push('"');
        } else {
            line.push_str(f);
        }
    }
    if line.is_empty() {
        // A lone empty field would be a blank line, which CSV readers skip.
        line.push_str("\"\"");
    }
    line.push('\n');
    w.write_all(line.as_bytes())
        .map_err(|e| WorkerError::io("writing a CSV shard", e))?;
    Ok(line.len() as u64)
}

/// Command-line arguments of `aigc-worker prepare`.
#[derive(Clone, Debug, clap::Args)]
pub struct PrepareArgs {
    /// Raw data: a file or directory, as `file:///abs/path` or a plain path.
    #[arg(long)]
    pub source: String,
    /// Format of the raw data.
    #[arg(long, value_enum)]
    pub format: InputFormat,
    /// Schema file (YAML or JSON, a Dataset's `spec.schema`); required for csv and jsonl.
    #[arg(long)]
    pub schema: Option<PathBuf>,
    /// Directory to publish the prepared dataset to; must not hold a published version.
    #[arg(long)]
    pub out: String,
    /// Fail at the first row that breaks the schema instead of dropping it.
    #[arg(long)]
    pub fail_on_invalid_rows: bool,
    /// Drop rows whose content repeats an earlier row.
    #[arg(long)]
    pub dedupe: bool,
    /// Drop rows longer than this many bytes.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_row_bytes: Option<u64>,
    /// Start a new shard once one reaches this many bytes.
    #[arg(long, default_value_t = 64 << 20, value_parser = clap::value_parser!(u64).range(1..))]
    pub shard_bytes: u64,
    /// Also write the full JSON report here.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Where the compact final summary goes (Kubernetes' termination message; at most 4096
    /// bytes: the report, less reject samples and column statistics when it would not fit).
    #[arg(long, default_value = crate::summary::DEFAULT_TERMINATION_MESSAGE_PATH)]
    pub termination_message_path: PathBuf,
}

/// Run `aigc-worker prepare`: print the report as one line of compact JSON on stdout and to
/// the termination-message path (see [`crate::summary`]), the full report to `--report`;
/// exit 0 when the dataset was published, 1 when it was not.
pub fn run_command(args: PrepareArgs) -> std::process::ExitCode {
    let schema = match args.schema.as_deref().map(read_schema).transpose() {
        Ok(schema) => schema,
        Err(e) => {
            let report = Report {
                error: Some(e.to_string()),
                ..Report::default()
            };
            return finish_report(&report, &args);
        }
    };
    let options = PrepareOptions {
        source: args.source.clone(),
        format: args.format,
        schema,
        out: args.out.clone(),
        drop_invalid_rows: !args.fail_on_invalid_rows,
        dedupe: args.dedupe,
        max_row_bytes: args.max_row_bytes,
        shard_bytes: args.shard_bytes,
    };
    let report = prepare(&options);
    finish_report(&report, &args)
}

fn finish_report(report: &Report, args: &PrepareArgs) -> std::process::ExitCode {
    let value = serde_json::to_value(report).expect("reports always serialise");
    if let Some(path) = &args.report {
        let json = serde_json::to_string_pretty(&value).expect("reports always serialise");
        if let Err(e) = objects::write_atomic(path, json.as_bytes()) {
            tracing::error!(error = %e, "could not write the report");
        }
    }
    let summary = crate::summary::compact(&value, &["rejectSamples", "columns", "ignoredColumns"]);
    crate::summary::emit(&summary, Some(&args.termination_message_path));
    match &report.error {
        None => std::process::ExitCode::SUCCESS,
        Some(error) => {
            tracing::error!(%error, "prepare failed; nothing was published");
            std::process::ExitCode::FAILURE
        }
    }
}
