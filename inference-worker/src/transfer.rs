//! `aigc-worker transfer`: the data mover for tier migrations. Parses tier URIs and S3
//! settings, runs [`aigc_storage::migration::migrate`] and prints progress, one line per object.
//! It exits 0 only when every object is verified at the destination.

use aigc_storage::crds::storage_tier::{RestoreTier, Retrieval, S3StorageClass};
use aigc_storage::migration::{MigrationOptions, MigrationReport, Phase, Progress, migrate};
use aigc_storage::{Location, S3Config, S3Credentials, Tier};

use crate::WorkerError;

/// Arguments of `aigc-worker transfer`.
#[derive(clap::Args, Debug, Clone)]
pub struct TransferArgs {
    /// Source tier: file:///abs/dir or s3://bucket/prefix.
    #[arg(long)]
    pub from: String,
    /// Destination tier: file:///abs/dir or s3://bucket/prefix.
    #[arg(long)]
    pub to: String,
    /// Delete the source once every object is verified at the destination.
    #[arg(long)]
    pub delete_source: bool,
    /// Objects copied at once.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub concurrency: u16,
    /// Average bytes per second across all copies; unlimited when omitted.
    #[arg(long, value_name = "BYTES_PER_S", value_parser = clap::value_parser!(u64).range(1..))]
    pub bandwidth_limit: Option<u64>,
    /// S3 endpoint URL (MinIO, Ceph, a local server); AWS when omitted.
    #[arg(long, env = "AWS_ENDPOINT_URL")]
    pub s3_endpoint: Option<String>,
    /// S3 region.
    #[arg(long, env = "AWS_REGION", default_value = "us-east-1")]
    pub s3_region: String,
    /// Address buckets as bucket.endpoint instead of endpoint/bucket (the default with
    /// --s3-endpoint).
    #[arg(long)]
    pub s3_virtual_hosted: bool,
    /// Storage class for objects written to an S3 destination, e.g. STANDARD_IA or GLACIER.
    #[arg(long)]
    pub storage_class: Option<String>,
    /// Restore speed for archived source objects: Expedited, Standard or Bulk.
    #[arg(long, default_value = "Standard")]
    pub restore_tier: String,
    /// Days a restored copy of an archived source object stays readable.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=365))]
    pub restore_days: u32,
    /// Where the compact final JSON summary goes (Kubernetes' termination message).
    #[arg(long, default_value = crate::summary::DEFAULT_TERMINATION_MESSAGE_PATH)]
    pub termination_message_path: std::path::PathBuf,
}

/// Run `aigc-worker transfer`: progress lines, then the final JSON summary as the last line
/// on stdout and in the termination message (`{"to", "objects", "bytes", "manifestDigest",
/// "copied", "alreadyVerified", "recopied", "abortedUploads", "sourceDeleted"}`, or
/// `{"error"}`); exit 0 only when every object is verified at the destination.
pub fn run_command(args: TransferArgs) -> std::process::ExitCode {
    let result = tokio::runtime::Runtime::new()
        .map_err(|e| WorkerError::io("tokio runtime", e))
        .and_then(|runtime| runtime.block_on(run(args.clone())));
    let (summary, code) = match result {
        Ok(report) => (
            serde_json::json!({
                "from": args.from,
                "to": args.to,
                "objects": report.objects,
                "bytes": report.bytes,
                "manifestDigest": report.manifest_digest,
                "copied": report.copied,
                "alreadyVerified": report.already_verified,
                "recopied": report.recopied,
                "abortedUploads": report.aborted_uploads,
                "sourceDeleted": report.source_deleted,
            }),
            std::process::ExitCode::SUCCESS,
        ),
        Err(error) => {
            eprintln!("aigc-worker transfer: {error}");
            (
                serde_json::json!({ "from": args.from, "to": args.to, "error": error.to_string() }),
                std::process::ExitCode::FAILURE,
            )
        }
    };
    crate::summary::emit(
        &crate::summary::compact(&summary, &[]),
        Some(&args.termination_message_path),
    );
    code
}

/// Run a transfer; `Ok` only when every object is verified at the destination.
pub async fn run(args: TransferArgs) -> Result<MigrationReport, WorkerError> {
    let from = Location::parse(&args.from)?;
    let to = Location::parse(&args.to)?;
    let source_config = s3_config(&args, None)?;
    let dest_config = s3_config(&args, parse_storage_class(args.storage_class.as_deref())?)?;
    let from = Tier::open(&from, &source_config).await?;
    let to = Tier::open(&to, &dest_config).await?;
    let options = MigrationOptions {
        concurrency: args.concurrency.into(),
        bandwidth_limit: args.bandwidth_limit,
        delete_source: args.delete_source,
        ..MigrationOptions::default()
    };
    let report = migrate(&from, &to, &options, &print_progress).await?;
    println!(
        "verified {} objects ({} bytes) at {}: manifest {}; copied {}, already there {}, re-copied after a mismatch {}, interrupted uploads removed {}; source {}",
        report.objects,
        report.bytes,
        to.uri(),
        report.manifest_digest,
        report.copied,
        report.already_verified,
        report.recopied,
        report.aborted_uploads,
        if report.source_deleted {
            "deleted"
        } else {
            "kept"
        },
    );
    Ok(report)
}

fn print_progress(p: &Progress<'_>) {
    let verb = match p.phase {
        Phase::Copying => "verified",
        Phase::DeletingSource => "deleted source",
    };
    println!(
        "{verb} {}/{} objects, {}/{} bytes: {}",
        p.objects_done, p.objects_total, p.bytes_done, p.bytes_total, p.key
    );
}

fn s3_config(
    args: &TransferArgs,
    storage_class: Option<S3StorageClass>,
) -> Result<S3Config, WorkerError> {
    let restore_tier = match args.restore_tier.as_str() {
        "Expedited" => RestoreTier::Expedited,
        "Standard" => RestoreTier::Standard,
        "Bulk" => RestoreTier::Bulk,
        other => {
            return Err(WorkerError::InvalidFlag {
                flag: "--restore-tier",
                value: other.into(),
                reason: "accepted: Expedited, Standard, Bulk".into(),
            });
        }
    };
    Ok(S3Config {
        endpoint: args.s3_endpoint.clone(),
        region: args.s3_region.clone(),
        force_path_style: args.s3_endpoint.is_some() && !args.s3_virtual_hosted,
        // The standard AWS variables, profiles and instance credentials, in the SDK's order.
        credentials: S3Credentials::DefaultChain,
        storage_class,
        retrieval: Retrieval {
            restore_tier,
            restore_days: args.restore_days,
        },
    })
}

fn parse_storage_class(value: Option<&str>) -> Result<Option<S3StorageClass>, WorkerError> {
    let Some(value) = value else { return Ok(None) };
    const CLASSES: [S3StorageClass; 7] = [
        S3StorageClass::Standard,
        S3StorageClass::StandardIa,
        S3StorageClass::OnezoneIa,
        S3StorageClass::IntelligentTiering,
        S3StorageClass::GlacierIr,
        S3StorageClass::Glacier,
        S3StorageClass::DeepArchive,
    ];
    CLASSES
        .into_iter()
        .find(|c| aigc_storage::s3::storage_class_name(*c) == value)
        .map(Some)
        .ok_or_else(|| WorkerError::InvalidFlag {
            flag: "--storage-class",
            value: value.into(),
            reason: format!(
                "accepted: {}",
                CLASSES.map(aigc_storage::s3::storage_class_name).join(", ")
            ),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_classes_parse_by_their_s3_names() {
        assert_eq!(
            parse_storage_class(Some("DEEP_ARCHIVE")).unwrap(),
            Some(S3StorageClass::DeepArchive)
        );
        let err = parse_storage_class(Some("COLD")).unwrap_err().to_string();
        assert!(
            err.contains("\"COLD\"") && err.contains("STANDARD_IA"),
            "{err}"
        );
    }
}
