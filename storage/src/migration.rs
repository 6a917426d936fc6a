//! Moving a Dataset's or Model's objects between tiers without ever losing data.
//!
//! [`plan_migration`] decides, from plain data, how each object is copied. [`migrate`] runs
//! a plan: copy, verify size and SHA-256 at the destination, record progress in a journal
//! object on the destination, make the copies durable, write the manifest, and only then
//! (optionally) delete the source. A rerun after a crash re-verifies what the journal lists
//! and copies the rest; leftovers of interrupted uploads are removed first.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::bandwidth::BandwidthLimit;
use crate::s3::COPY_OBJECT_LIMIT;
use crate::tier::Readability;
use crate::verify::check_entry;
use crate::{Error, Location, Manifest, ManifestEntry, Result, Tier};

/// Key of the journal object on the destination.
pub const JOURNAL_KEY: &str = ".aigc-transfer-journal.json";
const JOURNAL_FORMAT: u32 = 1;

/// How one object gets from the source to the destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CopyMethod {
    /// Both tiers are directories: the kernel copies the file.
    FileCopy,
    /// Same S3 endpoint: CopyObject, the bytes never leave the server.
    ServerSideCopy,
    /// Same S3 endpoint, above the 5 GiB CopyObject limit: UploadPartCopy in ranges.
    ServerSideMultipartCopy,
    /// Read from the source and write to the destination through this process.
    Stream,
}

/// One object to move.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedCopy {
    /// The object and what it must hash to.
    pub entry: ManifestEntry,
    /// How it is copied.
    pub method: CopyMethod,
}

/// What a migration will do.
#[derive(Clone, Debug, PartialEq)]
pub struct MigrationPlan {
    /// Source tier.
    pub from: Location,
    /// Destination tier.
    pub to: Location,
    /// The objects to have at the destination, with their digests.
    pub manifest: Manifest,
    /// Copies, largest first so the long ones start early.
    pub copies: Vec<PlannedCopy>,
}

/// Plan moving `manifest`'s objects from `from` to `to`. Pure: touches no backend.
pub fn plan_migration(
    manifest: &Manifest,
    from: &Location,
    to: &Location,
) -> Result<MigrationPlan> {
    if from.overlaps(to) {
        return Err(Error::Migration {
            from: from.to_string(),
            to: to.to_string(),
            reason: "the source and destination overlap; pick a destination outside the source"
                .into(),
        });
    }
    let same_s3_endpoint = matches!(
        (from, to),
        (Location::S3 { endpoint: a, .. }, Location::S3 { endpoint: b, .. }) if a == b
    );
    let fs_pair = matches!(
        (from, to),
        (Location::Filesystem { .. }, Location::Filesystem { .. })
    );
    let mut copies: Vec<PlannedCopy> = manifest
        .objects
        .iter()
        .map(|entry| PlannedCopy {
            method: if fs_pair {
                CopyMethod::FileCopy
            } else if same_s3_endpoint && entry.size > COPY_OBJECT_LIMIT {
                CopyMethod::ServerSideMultipartCopy
            } else if same_s3_endpoint {
                CopyMethod::ServerSideCopy
            } else {
                CopyMethod::Stream
            },
            entry: entry.clone(),
        })
        .collect();
    copies.sort_by(|a, b| {
        b.entry
            .size
            .cmp(&a.entry.size)
            .then(a.entry.key.cmp(&b.entry.key))
    });
    Ok(MigrationPlan {
        from: from.clone(),
        to: to.clone(),
        manifest: manifest.clone(),
        copies,
    })
}

/// Progress of a migration, stored on the destination under [`JOURNAL_KEY`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Journal {
    /// Journal format.
    pub format: u32,
    /// What is being moved; kept here so a rerun works even once the source is gone.
    pub manifest: Manifest,
    /// Keys copied and verified at the destination.
    pub verified: BTreeSet<String>,
    /// Every object verified, made durable, and the manifest written at the destination.
    pub complete: bool,
    /// The source has been deleted.
    pub source_deleted: bool,
}

impl Journal {
    fn new(manifest: Manifest) -> Self {
        Journal {
            format: JOURNAL_FORMAT,
            manifest,
            verified: BTreeSet::new(),
            complete: false,
            source_deleted: false,
        }
    }
}

/// How to run a migration.
#[derive(Clone, Debug)]
pub struct MigrationOptions {
    /// Objects copied at once.
    pub concurrency: usize,
    /// Average bytes per second across all copies; unlimited when `None`.
    pub bandwidth_limit: Option<u64>,
    /// Delete the source once every object is verified at the destination.
    pub delete_source: bool,
    /// Copies of one object before a persistent mismatch is an error.
    pub attempts: u32,
    /// Least time between journal writes (it is always written at the end).
    pub journal_interval: Duration,
}

impl Default for MigrationOptions {
    fn default() -> Self {
        MigrationOptions {
            concurrency: 8,
            bandwidth_limit: None,
            delete_source: false,
            attempts: 3,
            journal_interval: Duration::from_millis(500),
        }
    }
}

/// Stage of a migration, for progress reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Copying and verifying objects.
    Copying,
    /// Deleting the source.
    DeletingSource,
}

/// A progress report, sent after every object.
#[derive(Clone, Debug)]
pub struct Progress<'a> {
    /// Current stage.
    pub phase: Phase,
    /// The object just finished.
    pub key: &'a str,
    /// Objects finished in this phase.
    pub objects_done: usize,
    /// Objects in the migration.
    pub objects_total: usize,
    /// Bytes finished in this phase.
    pub bytes_done: u64,
    /// Bytes in the migration.
    pub bytes_total: u64,
}

/// What a finished migration did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MigrationReport {
    /// `sha256:` digest of the manifest now at the destination.
    pub manifest_digest: String,
    /// Objects in the manifest.
    pub objects: usize,
    /// Bytes in the manifest.
    pub bytes: u64,
    /// Objects copied by this run.
    pub copied: usize,
    /// Objects an earlier run had copied that verified again and were kept.
    pub already_verified: usize,
    /// Copies that failed verification and were copied again.
    pub recopied: usize,
    /// Leftovers of interrupted uploads removed at the destination.
    pub aborted_uploads: usize,
    /// Whether the source is deleted.
    pub source_deleted: bool,
}

/// Move every object from `from` to `to` (see the module docs for the guarantees).
pub async fn migrate(
    from: &Tier,
    to: &Tier,
    options: &MigrationOptions,
    progress: &(dyn Fn(&Progress<'_>) + Sync),
) -> Result<MigrationReport> {
    let fail = |reason: String| Error::Migration {
        from: from.uri(),
        to: to.uri(),
        reason,
    };
    if from.location().overlaps(&to.location()) {
        return Err(fail(
            "the source and destination overlap; pick a destination outside the source".into(),
        ));
    }
    if let Tier::S3(_) = to {
        to.probe().await?;
    }
    let previous = match to.head(crate::migration::JOURNAL_KEY).await? {
        Some(_) => Some(read_journal(to).await?),
        None => None,
    };
    let manifest = match &previous {
        // Once complete, the journal is the record: the source may be partly deleted.
        Some(journal) if journal.complete => journal.manifest.clone(),
        _ => source_manifest(from, options.concurrency).await?,
    };
    if manifest.objects.is_empty() {
        return Err(fail(
            "the source has no objects; check the URI (nothing was written)".into(),
        ));
    }
    let plan = plan_migration(&manifest, &from.location(), &to.location())?;
    let journal = match previous {
        Some(j) if j.manifest.digest() == manifest.digest() => j,
        _ => Journal::new(manifest.clone()),
    };
    let aborted_uploads = to.abort_incomplete_uploads().await?;
    let run = Run {
        from,
        to,
        options,
        limit: options.bandwidth_limit.map(BandwidthLimit::new),
        journal: tokio::sync::Mutex::new((journal, None)),
        copied: AtomicUsize::new(0),
        already_verified: AtomicUsize::new(0),
        recopied: AtomicUsize::new(0),
        done: AtomicUsize::new(0),
        bytes_done: AtomicU64::new(0),
        progress,
        first_error: Mutex::new(None),
    };
    run.copy_all(&plan).await?;

    let (mut journal, _) = run.journal.into_inner();
    if !journal.complete {
        let keys: Vec<String> = plan
            .manifest
            .objects
            .iter()
            .map(|e| e.key.clone())
            .collect();
        to.sync(&keys).await?;
        to.write_manifest(&plan.manifest).await?;
        to.sync(&[crate::MANIFEST_KEY.to_owned()]).await?;
        journal.complete = true;
        write_journal(to, &journal).await?;
    }
    if options.delete_source && !journal.source_deleted {
        delete_source(from, &plan, options, progress).await?;
        journal.source_deleted = true;
        write_journal(to, &journal).await?;
    }
    Ok(MigrationReport {
        manifest_digest: plan.manifest.digest(),
        objects: plan.manifest.objects.len(),
        bytes: plan.manifest.total_bytes,
        copied: run.copied.into_inner(),
        already_verified: run.already_verified.into_inner(),
        recopied: run.recopied.into_inner(),
        aborted_uploads,
        source_deleted: journal.source_deleted,
    })
}

/// The source's stored manifest, or one built from its listing and stored next to the data.
/// Archived objects get a restore request first and fail the migration until readable.
async fn source_manifest(from: &Tier, concurrency: usize) -> Result<Manifest> {
    from.probe().await?;
    check_readable(from).await?;
    if let Some(manifest) = from.read_manifest().await? {
        return Ok(manifest);
    }
    let manifest = from.build_manifest(concurrency).await?;
    if !manifest.objects.is_empty() {
        from.write_manifest(&manifest).await?;
    }
    Ok(manifest)
}

async fn check_readable(from: &Tier) -> Result<()> {
    let Tier::S3(s3) = from else { return Ok(()) };
    let archived: Vec<String> = from
        .list("")
        .await?
        .into_iter()
        .filter(|m| m.readable != Readability::Readable)
        .map(|m| m.key)
        .collect();
    let mut restoring = Vec::new();
    for key in &archived {
        if from
            .head(key)
            .await?
            .is_some_and(|m| m.readable == Readability::Readable)
        {
            continue;
        }
        match s3.restore(key).await {
            Error::Restoring { .. } => restoring.push(key.as_str()),
            other => return Err(other),
        }
    }
    if restoring.is_empty() {
        return Ok(());
    }
    Err(Error::Migration {
        from: from.uri(),
        to: String::from("(not started)"),
        reason: format!(
            "{} object(s) are in an archive storage class and restoring (first: {:?}); \
             restores were requested with the tier's retrieval settings; run the migration \
             again once they are readable (nothing was copied)",
            restoring.len(),
            restoring[0]
        ),
    })
}

async fn read_journal(to: &Tier) -> Result<Journal> {
    let bytes = to.get_bytes(JOURNAL_KEY).await?;
    let journal: Journal = serde_json::from_slice(&bytes).map_err(|e| Error::Migration {
        from: String::from("(journal)"),
        to: to.uri(),
        reason: format!("the journal {JOURNAL_KEY} does not parse ({e}); delete it to start over"),
    })?;
    if journal.format != JOURNAL_FORMAT {
        return Err(Error::Migration {
            from: String::from("(journal)"),
            to: to.uri(),
            reason: format!(
                "journal format {} is not supported; this build reads format {JOURNAL_FORMAT}",
                journal.format
            ),
        });
    }
    Ok(journal)
}

async fn write_journal(to: &Tier, journal: &Journal) -> Result<()> {
    let bytes = serde_json::to_vec(journal).expect("a journal always serialises");
    to.put_bytes(JOURNAL_KEY, bytes).await
}

struct Run<'a> {
    from: &'a Tier,
    to: &'a Tier,
    options: &'a MigrationOptions,
    limit: Option<BandwidthLimit>,
    /// The journal and when it was last written.
    journal: tokio::sync::Mutex<(Journal, Option<Instant>)>,
    copied: AtomicUsize,
    already_verified: AtomicUsize,
    recopied: AtomicUsize,
    done: AtomicUsize,
    bytes_done: AtomicU64,
    progress: &'a (dyn Fn(&Progress<'_>) + Sync),
    first_error: Mutex<Option<Error>>,
}

impl Run<'_> {
    async fn copy_all(&self, plan: &MigrationPlan) -> Result<()> {
        // Every object is attempted even after a failure, so a rerun has less to do.
        futures::stream::iter(&plan.copies)
            .for_each_concurrent(self.options.concurrency.max(1), |copy| async move {
                if let Err(e) = self.copy_one(plan, copy).await {
                    let mut first = self.first_error.lock().unwrap_or_else(|p| p.into_inner());
                    first.get_or_insert(e);
                }
            })
            .await;
        let failed = self
            .first_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(e) = failed {
            // Keep what was verified so the rerun can skip it.
            let guard = self.journal.lock().await;
            write_journal(self.to, &guard.0).await?;
            return Err(e);
        }
        let guard = self.journal.lock().await;
        write_journal(self.to, &guard.0).await
    }

    async fn copy_one(&self, plan: &MigrationPlan, copy: &PlannedCopy) -> Result<()> {
        let entry = &copy.entry;
        let journaled = self.journal.lock().await.0.verified.contains(&entry.key);
        let mut verified = false;
        if journaled {
            match self.to.verify(entry).await {
                Ok(()) => {
                    verified = true;
                    self.already_verified.fetch_add(1, Ordering::Relaxed);
                }
                Err(Error::Mismatch { .. } | Error::NotFound { .. }) => {
                    self.recopied.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => return Err(e),
            }
        }
        let mut attempt = 0;
        while !verified {
            attempt += 1;
            let server_sha256 = self.transfer(copy).await?;
            match self.verify_copy(copy, server_sha256).await {
                Ok(()) => {
                    verified = true;
                    self.copied.fetch_add(1, Ordering::Relaxed);
                }
                Err(e @ Error::Mismatch { .. }) if attempt >= self.options.attempts => {
                    return Err(e);
                }
                Err(Error::Mismatch { .. }) => {
                    self.recopied.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => return Err(e),
            }
        }
        self.record(plan, &entry.key).await
    }

    /// Copy one object; returns the SHA-256 the destination server computed over the new
    /// object when it reports one.
    async fn transfer(&self, copy: &PlannedCopy) -> Result<Option<String>> {
        let key = copy.entry.key.as_str();
        match (copy.method, self.from, self.to) {
            (CopyMethod::FileCopy, Tier::Filesystem(src), Tier::Filesystem(dst))
                if self.limit.is_none() =>
            {
                dst.copy_from(src, key, key).await.map(|()| None)
            }
            (
                CopyMethod::ServerSideCopy | CopyMethod::ServerSideMultipartCopy,
                Tier::S3(src),
                Tier::S3(dst),
            ) => {
                if let Some(limit) = &self.limit {
                    limit.wait_for(copy.entry.size).await;
                }
                dst.copy_from(src, key, key, copy.entry.size).await
            }
            _ => {
                let reader = self.from.get(key).await?;
                let reader: crate::ObjectReader = match &self.limit {
                    Some(limit) => Box::pin(limit.throttle(reader)),
                    None => reader,
                };
                self.to
                    .put(key, reader, copy.entry.size)
                    .await
                    .map(|()| None)
            }
        }
    }

    /// Check the copy at the destination: the destination server's own SHA-256 of the new
    /// object when it computed one (server-side copies), otherwise by reading it back.
    async fn verify_copy(&self, copy: &PlannedCopy, server_sha256: Option<String>) -> Result<()> {
        if server_sha256.as_deref() == Some(copy.entry.sha256.as_str()) {
            return Ok(());
        }
        self.to.verify(&copy.entry).await.map_err(|e| match e {
            Error::NotFound { .. } => Error::Mismatch {
                tier: self.to.uri(),
                key: copy.entry.key.clone(),
                expected_size: copy.entry.size,
                expected_sha256: copy.entry.sha256.clone(),
                actual_size: 0,
                actual_sha256: "(missing)".into(),
            },
            other => other,
        })?;
        Ok(())
    }

    async fn record(&self, plan: &MigrationPlan, key: &str) -> Result<()> {
        let size = plan.manifest.entry(key).map_or(0, |e| e.size);
        let done = self.done.fetch_add(1, Ordering::Relaxed) + 1;
        let bytes_done = self.bytes_done.fetch_add(size, Ordering::Relaxed) + size;
        {
            let mut guard = self.journal.lock().await;
            let (journal, last_write) = &mut *guard;
            journal.verified.insert(key.to_owned());
            if last_write.is_none_or(|t| t.elapsed() >= self.options.journal_interval) {
                write_journal(self.to, journal).await?;
                *last_write = Some(Instant::now());
            }
        }
        (self.progress)(&Progress {
            phase: Phase::Copying,
            key,
            objects_done: done,
            objects_total: plan.copies.len(),
            bytes_done,
            bytes_total: plan.manifest.total_bytes,
        });
        Ok(())
    }
}

async fn delete_source(
    from: &Tier,
    plan: &MigrationPlan,
    options: &MigrationOptions,
    progress: &(dyn Fn(&Progress<'_>) + Sync),
) -> Result<()> {
    let done = AtomicUsize::new(0);
    let bytes_done = AtomicU64::new(0);
    futures::stream::iter(&plan.manifest.objects)
        .map(Ok)
        .try_for_each_concurrent(options.concurrency.max(1), |entry| {
            let (done, bytes_done) = (&done, &bytes_done);
            async move {
                // Never delete something that is not the object we copied.
                match from.head(&entry.key).await? {
                    None => {}
                    Some(meta) if meta.size == entry.size => from.delete(&entry.key).await?,
                    Some(meta) => {
                        return Err(Error::Migration {
                            from: from.uri(),
                            to: plan.to.to_string(),
                            reason: format!(
                                "source object {:?} changed since it was copied ({} bytes, manifest says {}); it was not deleted",
                                entry.key, meta.size, entry.size
                            ),
                        });
                    }
                }
                progress(&Progress {
                    phase: Phase::DeletingSource,
                    key: &entry.key,
                    objects_done: done.fetch_add(1, Ordering::Relaxed) + 1,
                    objects_total: plan.manifest.objects.len(),
                    bytes_done: bytes_done.fetch_add(entry.size, Ordering::Relaxed) + entry.size,
                    bytes_total: plan.manifest.total_bytes,
                });
                Ok(())
            }
        })
        .await?;
    from.delete(crate::MANIFEST_KEY).await?;
    // A manifest write at the source killed half-way leaves a partial file there.
    from.abort_incomplete_uploads().await.map(|_| ())
}

/// Check every object of `manifest` at `tier`; the first mismatch or missing object fails.
pub async fn verify_manifest(tier: &Tier, manifest: &Manifest, concurrency: usize) -> Result<()> {
    futures::stream::iter(&manifest.objects)
        .map(Ok)
        .try_for_each_concurrent(concurrency.max(1), |entry| async move {
            let (size, sha) = tier.digest(&entry.key).await?;
            check_entry(&tier.uri(), entry, size, &sha)
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(sizes: &[(&str, u64)]) -> Manifest {
        Manifest::new(
            sizes
                .iter()
                .map(|(k, s)| ManifestEntry {
                    key: (*k).into(),
                    size: *s,
                    sha256: "a".repeat(64),
                })
                .collect(),
        )
        .unwrap()
    }

    fn loc(uri: &str) -> Location {
        Location::parse(uri).unwrap()
    }

    fn s3(endpoint: &str, uri: &str) -> Location {
        match loc(uri) {
            Location::S3 { bucket, prefix, .. } => Location::S3 {
                endpoint: Some(endpoint.into()),
                bucket,
                prefix,
            },
            other => other,
        }
    }

    #[test]
    fn same_endpoint_s3_uses_server_side_copy_and_multipart_above_5_gib() {
        let m = manifest(&[("small", 10), ("huge", 6 << 30), ("edge", 5 << 30)]);
        let plan = plan_migration(
            &m,
            &s3("http://s3.local", "s3://hot/ds"),
            &s3("http://s3.local", "s3://cold/ds"),
        )
        .unwrap();
        let methods: Vec<_> = plan
            .copies
            .iter()
            .map(|c| (c.entry.key.as_str(), c.method))
            .collect();
        assert_eq!(
            methods,
            [
                ("huge", CopyMethod::ServerSideMultipartCopy),
                ("edge", CopyMethod::ServerSideCopy),
                ("small", CopyMethod::ServerSideCopy),
            ]
        );
    }

    #[test]
    fn different_endpoints_and_mixed_backends_stream() {
        let m = manifest(&[("a", 1)]);
        let across = plan_migration(
            &m,
            &s3("http://one", "s3://bkt/x"),
            &s3("http://two", "s3://bkt/x"),
        )
        .unwrap();
        assert_eq!(across.copies[0].method, CopyMethod::Stream);
        let mixed =
            plan_migration(&m, &loc("file:///hot"), &s3("http://one", "s3://bkt/x")).unwrap();
        assert_eq!(mixed.copies[0].method, CopyMethod::Stream);
        let files = plan_migration(&m, &loc("file:///hot"), &loc("file:///warm")).unwrap();
        assert_eq!(files.copies[0].method, CopyMethod::FileCopy);
    }

    #[test]
    fn overlapping_tiers_are_refused() {
        let m = manifest(&[("a", 1)]);
        let err = plan_migration(&m, &loc("file:///data"), &loc("file:///data/cold")).unwrap_err();
        assert!(err.to_string().contains("overlap"), "{err}");
        let err = plan_migration(&m, &s3("e", "s3://bkt/x"), &s3("e", "s3://bkt/x")).unwrap_err();
        assert!(err.to_string().contains("overlap"), "{err}");
    }

    #[test]
    fn plan_covers_every_object_once() {
        let m = manifest(&[("a", 3), ("b", 3), ("c", 1)]);
        let plan = plan_migration(&m, &loc("file:///x"), &loc("file:///y")).unwrap();
        let keys: BTreeSet<_> = plan.copies.iter().map(|c| c.entry.key.as_str()).collect();
        assert_eq!(keys.len(), 3);
        assert_eq!(plan.copies[0].entry.key, "a");
        assert_eq!(plan.manifest.digest(), m.digest());
    }
}
