//! S3-compatible tiers through aws-sdk-s3: any endpoint, path-style addressing, static
//! credentials or the default chain, storage classes including archive classes.
//!
//! Reading an archived object (GLACIER, DEEP_ARCHIVE) asks for a restore with the tier's
//! retrieval settings and fails with [`Error::Restoring`] until the object is readable.

use std::fmt;

use aigc_crds::storage_tier::{RestoreTier, Retrieval, S3StorageClass};
use aws_sdk_s3::Client;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart, GlacierJobParameters,
    RestoreRequest, StorageClass,
};
use base64::Engine;
use tokio::io::AsyncReadExt;

use crate::tier::{ObjectMeta, ObjectReader, Readability, RestoreState};
use crate::{Error, Result, check_key};

/// Objects up to this size are uploaded with one PutObject; larger ones in parts.
pub const MULTIPART_THRESHOLD: u64 = 16 << 20;
/// Largest object CopyObject accepts; larger ones are copied in parts.
pub const COPY_OBJECT_LIMIT: u64 = 5 << 30;
const MAX_PARTS: u64 = 10_000;
const COPY_PART_SIZE: u64 = 512 << 20;

/// How to reach an S3-compatible service and what to write there.
#[derive(Clone, Debug, PartialEq)]
pub struct S3Config {
    /// Endpoint URL; AWS when `None`.
    pub endpoint: Option<String>,
    /// Region.
    pub region: String,
    /// Address buckets as `endpoint/bucket`.
    pub force_path_style: bool,
    /// Where credentials come from.
    pub credentials: S3Credentials,
    /// Storage class for objects written; the bucket default when `None`.
    pub storage_class: Option<S3StorageClass>,
    /// How archived objects are restored.
    pub retrieval: Retrieval,
}

impl Default for S3Config {
    fn default() -> Self {
        S3Config {
            endpoint: None,
            region: "us-east-1".into(),
            force_path_style: false,
            credentials: S3Credentials::DefaultChain,
            storage_class: None,
            retrieval: Retrieval {
                restore_tier: RestoreTier::Standard,
                restore_days: 1,
            },
        }
    }
}

/// Where S3 credentials come from.
#[derive(Clone, PartialEq, Eq)]
pub enum S3Credentials {
    /// Environment, profile files, web identity, container or instance metadata.
    DefaultChain,
    /// Fixed keys, e.g. from a Kubernetes Secret.
    Static {
        /// `AWS_ACCESS_KEY_ID`.
        access_key_id: String,
        /// `AWS_SECRET_ACCESS_KEY`.
        secret_access_key: String,
        /// `AWS_SESSION_TOKEN`, if any.
        session_token: Option<String>,
    },
}

impl fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            S3Credentials::DefaultChain => f.write_str("DefaultChain"),
            S3Credentials::Static { access_key_id, .. } => f
                .debug_struct("Static")
                .field("access_key_id", access_key_id)
                .finish_non_exhaustive(),
        }
    }
}

/// What a bounded listing of an S3 tier added up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Usage {
    /// Bytes in the objects listed.
    pub bytes: u64,
    /// Objects listed.
    pub objects: u64,
    /// Whether the listing reached the end; when false, `bytes` and `objects` are lower bounds.
    pub complete: bool,
}

/// A bucket and key prefix.
#[derive(Clone, Debug)]
pub struct S3Tier {
    client: Client,
    endpoint: Option<String>,
    bucket: String,
    prefix: String,
    storage_class: Option<S3StorageClass>,
    retrieval: Retrieval,
}

impl S3Tier {
    /// A tier for `bucket` under `prefix` (empty or ending in `/`).
    pub async fn new(config: &S3Config, bucket: &str, prefix: &str) -> Result<Self> {
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(config.region.clone()));
        if let S3Credentials::Static {
            access_key_id,
            secret_access_key,
            session_token,
        } = &config.credentials
        {
            loader = loader.credentials_provider(Credentials::new(
                access_key_id,
                secret_access_key,
                session_token.clone(),
                None,
                "aigc-static",
            ));
        }
        let shared = loader.load().await;
        let mut builder = aws_sdk_s3::config::Builder::from(&shared)
            .force_path_style(config.force_path_style)
            // Integrity is checked end to end with SHA-256 against the manifest.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
        if let Some(endpoint) = &config.endpoint {
            builder = builder.endpoint_url(endpoint);
        }
        let prefix = if prefix.is_empty() || prefix.ends_with('/') {
            prefix.to_owned()
        } else {
            format!("{prefix}/")
        };
        Ok(S3Tier {
            client: Client::from_conf(builder.build()),
            endpoint: config.endpoint.clone(),
            bucket: bucket.to_owned(),
            prefix,
            storage_class: config.storage_class,
            retrieval: config.retrieval.clone(),
        })
    }

    /// The bucket.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The key prefix, empty or ending in `/`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The endpoint URL, `None` for AWS.
    pub fn endpoint(&self) -> Option<&str> {
        self.endpoint.as_deref()
    }

    fn uri(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.prefix)
    }

    fn full_key(&self, key: &str) -> Result<String> {
        check_key(key)?;
        Ok(format!("{}{key}", self.prefix))
    }

    fn error<E>(&self, op: &'static str, key: Option<&str>, err: SdkError<E>) -> Error
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let status = err.raw_response().map(|r| r.status().as_u16());
        let code = err.code().unwrap_or_default().to_owned();
        let detail = err
            .message()
            .map(str::to_owned)
            .unwrap_or_else(|| DisplayErrorContext(&err).to_string());
        let tier = self.uri();
        match (code.as_str(), status) {
            ("NoSuchBucket", _) => Error::TierNotFound {
                tier,
                detail: format!("bucket {:?} does not exist: {detail}", self.bucket),
            },
            ("NoSuchKey", _) | (_, Some(404)) if key.is_some() => Error::NotFound {
                tier,
                key: key.unwrap_or_default().to_owned(),
            },
            (
                "InvalidAccessKeyId"
                | "SignatureDoesNotMatch"
                | "AccessDenied"
                | "InvalidToken"
                | "ExpiredToken",
                _,
            )
            | (_, Some(403)) => Error::AccessDenied {
                tier,
                code: if code.is_empty() { "403".into() } else { code },
                detail,
            },
            _ => Error::S3 {
                op,
                tier: match key {
                    Some(k) => format!("{tier}{k}"),
                    None => tier,
                },
                detail: if code.is_empty() {
                    detail
                } else {
                    format!("{code}: {detail}")
                },
            },
        }
    }

    /// Check that the bucket exists and that the credentials may use it (HeadBucket).
    pub async fn head_bucket(&self) -> Result<()> {
        match self.client.head_bucket().bucket(&self.bucket).send().await {
            Ok(_) => Ok(()),
            // HEAD answers carry no body, so no error code: the status says it.
            Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 404) => {
                Err(Error::TierNotFound {
                    tier: self.uri(),
                    detail: format!("bucket {:?} does not exist", self.bucket),
                })
            }
            Err(e) => Err(self.probe_error("HeadBucket", e)),
        }
    }

    /// Add up the objects under the tier's prefix, listing at most `max_pages` pages of
    /// `page_size` keys, so that a huge bucket bounds the work; [`Usage::complete`] says
    /// whether the listing reached the end.
    pub async fn usage(&self, page_size: i32, max_pages: usize) -> Result<Usage> {
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(&self.prefix)
            .max_keys(page_size)
            .into_paginator()
            .send();
        let mut usage = Usage {
            bytes: 0,
            objects: 0,
            complete: true,
        };
        let mut listed = 0;
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| self.probe_error("ListObjectsV2", e))?;
            for object in page.contents() {
                // Folder markers written by consoles hold no data.
                if object.key().is_none_or(|key| key.ends_with('/')) {
                    continue;
                }
                usage.objects += 1;
                usage.bytes += object.size().unwrap_or_default().max(0) as u64;
            }
            listed += 1;
            if listed == max_pages && page.is_truncated().unwrap_or(false) {
                usage.complete = false;
                break;
            }
        }
        Ok(usage)
    }

    /// Like [`S3Tier::error`], but a request that never got an answer (connection refused,
    /// DNS, TLS, timeouts) is [`Error::Unreachable`].
    fn probe_error<E>(&self, op: &'static str, err: SdkError<E>) -> Error
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        match &err {
            SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) => Error::Unreachable {
                endpoint: self
                    .endpoint
                    .clone()
                    .unwrap_or_else(|| "the AWS S3 endpoint".to_owned()),
                detail: DisplayErrorContext(&err).to_string(),
            },
            _ => self.error(op, None, err),
        }
    }

    pub(crate) async fn probe(&self) -> Result<()> {
        self.client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(&self.prefix)
            .max_keys(1)
            .send()
            .await
            .map_err(|e| self.error("ListObjectsV2", None, e))?;
        Ok(())
    }

    pub(crate) async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(format!("{}{prefix}", self.prefix))
            .into_paginator()
            .send();
        let mut out = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| self.error("ListObjectsV2", None, e))?;
            for object in page.contents() {
                let Some(full) = object.key() else { continue };
                let key = full.strip_prefix(&self.prefix).unwrap_or(full);
                if key.ends_with('/') {
                    continue; // a folder marker written by consoles, not data
                }
                check_key(key)?;
                let storage_class = object.storage_class().map(|c| c.as_str().to_owned());
                out.push(ObjectMeta {
                    key: key.to_owned(),
                    size: object.size().unwrap_or_default().max(0) as u64,
                    readable: if storage_class.as_deref().is_some_and(is_archive_class) {
                        // The listing does not say whether a restore finished; head does.
                        Readability::Archived
                    } else {
                        Readability::Readable
                    },
                    storage_class,
                });
            }
        }
        Ok(out)
    }

    pub(crate) async fn head(&self, key: &str) -> Result<Option<ObjectMeta>> {
        let full = self.full_key(key)?;
        let out = match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(&full)
            .send()
            .await
        {
            Ok(out) => out,
            Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 404) => {
                return Ok(None);
            }
            Err(e) => return Err(self.error("HeadObject", Some(key), e)),
        };
        let storage_class = out.storage_class().map(|c| c.as_str().to_owned());
        let readable = match (
            storage_class.as_deref().is_some_and(is_archive_class),
            out.restore(),
        ) {
            (false, _) => Readability::Readable,
            (true, None) => Readability::Archived,
            (true, Some(r)) if r.contains("ongoing-request=\"true\"") => Readability::Restoring,
            (true, Some(_)) => Readability::Readable,
        };
        Ok(Some(ObjectMeta {
            key: key.to_owned(),
            size: out.content_length().unwrap_or_default().max(0) as u64,
            storage_class,
            readable,
        }))
    }

    pub(crate) async fn get(&self, key: &str) -> Result<ObjectReader> {
        let full = self.full_key(key)?;
        match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&full)
            .send()
            .await
        {
            Ok(out) => Ok(Box::pin(out.body.into_async_read())),
            Err(e) if e.code() == Some("InvalidObjectState") => Err(self.restore(key).await),
            Err(e) => Err(self.error("GetObject", Some(key), e)),
        }
    }

    /// Ask for a restore of an archived object unless one is under way; the error to report.
    pub async fn restore(&self, key: &str) -> Error {
        let meta = match self.head(key).await {
            Ok(Some(meta)) => meta,
            Ok(None) => {
                return Error::NotFound {
                    tier: self.uri(),
                    key: key.to_owned(),
                };
            }
            Err(e) => return e,
        };
        let restoring = |state| Error::Restoring {
            tier: self.uri(),
            key: key.to_owned(),
            storage_class: meta.storage_class.clone().unwrap_or_default(),
            state,
        };
        if meta.readable == Readability::Restoring {
            return restoring(RestoreState::InProgress);
        }
        let params = match GlacierJobParameters::builder()
            .tier(match self.retrieval.restore_tier {
                RestoreTier::Expedited => aws_sdk_s3::types::Tier::Expedited,
                RestoreTier::Standard => aws_sdk_s3::types::Tier::Standard,
                RestoreTier::Bulk => aws_sdk_s3::types::Tier::Bulk,
            })
            .build()
        {
            Ok(params) => params,
            Err(e) => {
                return Error::S3 {
                    op: "RestoreObject",
                    tier: self.uri(),
                    detail: e.to_string(),
                };
            }
        };
        let request = RestoreRequest::builder()
            .days(self.retrieval.restore_days.min(i32::MAX as u32) as i32)
            .glacier_job_parameters(params)
            .build();
        let full = format!("{}{key}", self.prefix);
        match self
            .client
            .restore_object()
            .bucket(&self.bucket)
            .key(full)
            .restore_request(request)
            .send()
            .await
        {
            Ok(_) => restoring(RestoreState::Requested),
            Err(e) if e.code() == Some("RestoreAlreadyInProgress") => {
                restoring(RestoreState::InProgress)
            }
            Err(e) => self.error("RestoreObject", Some(key), e),
        }
    }

    fn storage_class_for(&self, key: &str) -> Option<StorageClass> {
        // Metadata stays readable without a restore, whatever the tier's class.
        if crate::tier::is_metadata_key(key) {
            return None;
        }
        self.storage_class
            .map(|c| StorageClass::from(storage_class_name(c)))
    }

    pub(crate) async fn put(&self, key: &str, mut body: ObjectReader, size: u64) -> Result<()> {
        let full = self.full_key(key)?;
        if size <= MULTIPART_THRESHOLD {
            let mut buf = Vec::with_capacity(size as usize);
            (&mut body)
                .take(size + 1)
                .read_to_end(&mut buf)
                .await
                .map_err(|e| self.read_error(key, e))?;
            check_length(key, size, buf.len() as u64)?;
            self.client
                .put_object()
                .bucket(&self.bucket)
                .key(&full)
                .set_storage_class(self.storage_class_for(key))
                .content_length(size as i64)
                .body(ByteStream::from(buf))
                .send()
                .await
                .map_err(|e| self.error("PutObject", Some(key), e))?;
            return Ok(());
        }
        let upload = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(&full)
            .set_storage_class(self.storage_class_for(key))
            .send()
            .await
            .map_err(|e| self.error("CreateMultipartUpload", Some(key), e))?;
        let upload_id = upload.upload_id().unwrap_or_default().to_owned();
        let result = self.upload_parts(key, &full, &upload_id, body, size).await;
        if result.is_err() {
            // Best effort: a crash instead leaves it to `abort_multipart_uploads`.
            let _ = self
                .client
                .abort_multipart_upload()
                .bucket(&self.bucket)
                .key(&full)
                .upload_id(&upload_id)
                .send()
                .await;
        }
        result
    }

    async fn upload_parts(
        &self,
        key: &str,
        full: &str,
        upload_id: &str,
        mut body: ObjectReader,
        size: u64,
    ) -> Result<()> {
        let part_size = MULTIPART_THRESHOLD.max(size.div_ceil(MAX_PARTS));
        let mut parts = Vec::new();
        let mut sent = 0u64;
        while sent < size {
            let len = part_size.min(size - sent);
            let mut buf = Vec::with_capacity(len as usize);
            (&mut body)
                .take(len)
                .read_to_end(&mut buf)
                .await
                .map_err(|e| self.read_error(key, e))?;
            if buf.len() as u64 != len {
                return check_length(key, size, sent + buf.len() as u64);
            }
            let number = parts.len() as i32 + 1;
            let out = self
                .client
                .upload_part()
                .bucket(&self.bucket)
                .key(full)
                .upload_id(upload_id)
                .part_number(number)
                .content_length(len as i64)
                .body(ByteStream::from(buf))
                .send()
                .await
                .map_err(|e| self.error("UploadPart", Some(key), e))?;
            parts.push(
                CompletedPart::builder()
                    .part_number(number)
                    .set_e_tag(out.e_tag().map(str::to_owned))
                    .build(),
            );
            sent += len;
        }
        let mut rest = [0u8; 1];
        if body
            .read(&mut rest)
            .await
            .map_err(|e| self.read_error(key, e))?
            != 0
        {
            return check_length(key, size, size + 1);
        }
        self.complete(key, full, upload_id, parts, size).await
    }

    async fn complete(
        &self,
        key: &str,
        full: &str,
        upload_id: &str,
        parts: Vec<CompletedPart>,
        size: u64,
    ) -> Result<()> {
        let result = self
            .client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(full)
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            // Some S3-compatible servers (moto among them) answer 200 with a differently named
            // XML root that the SDK cannot parse. A 200 means the object is committed; check it.
            Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 200) => {
                match self.head(key).await? {
                    Some(meta) if meta.size == size => Ok(()),
                    _ => Err(self.error("CompleteMultipartUpload", Some(key), e)),
                }
            }
            Err(e) => Err(self.error("CompleteMultipartUpload", Some(key), e)),
        }
    }

    /// Server-side copy of `from` in `src` to `to` here (same endpoint and credentials);
    /// multipart copy above [`COPY_OBJECT_LIMIT`]. Returns the hex SHA-256 the server computed
    /// for the new object when it reports one for the whole object.
    pub async fn copy_from(
        &self,
        src: &S3Tier,
        from: &str,
        to: &str,
        size: u64,
    ) -> Result<Option<String>> {
        let source = copy_source(&src.bucket, &src.full_key(from)?);
        let target = self.full_key(to)?;
        if size <= COPY_OBJECT_LIMIT {
            let out = self
                .client
                .copy_object()
                .bucket(&self.bucket)
                .key(&target)
                .copy_source(source)
                .set_storage_class(self.storage_class_for(to))
                .checksum_algorithm(ChecksumAlgorithm::Sha256)
                .send()
                .await
                .map_err(|e| match src.error("CopyObject", Some(from), e) {
                    Error::NotFound { .. } => Error::NotFound {
                        tier: src.uri(),
                        key: from.to_owned(),
                    },
                    other => other,
                })?;
            let sha = out
                .copy_object_result()
                .and_then(|r| r.checksum_sha256())
                .and_then(|b64| base64::engine::general_purpose::STANDARD.decode(b64).ok())
                .filter(|raw| raw.len() == 32)
                .map(hex::encode);
            return Ok(sha);
        }
        let upload = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(&target)
            .set_storage_class(self.storage_class_for(to))
            .send()
            .await
            .map_err(|e| self.error("CreateMultipartUpload", Some(to), e))?;
        let upload_id = upload.upload_id().unwrap_or_default().to_owned();
        let result = async {
            let mut parts = Vec::new();
            let mut start = 0u64;
            while start < size {
                let end = (start + COPY_PART_SIZE).min(size) - 1;
                let number = parts.len() as i32 + 1;
                let out = self
                    .client
                    .upload_part_copy()
                    .bucket(&self.bucket)
                    .key(&target)
                    .upload_id(&upload_id)
                    .part_number(number)
                    .copy_source(&source)
                    .copy_source_range(format!("bytes={start}-{end}"))
                    .send()
                    .await
                    .map_err(|e| self.error("UploadPartCopy", Some(to), e))?;
                parts.push(
                    CompletedPart::builder()
                        .part_number(number)
                        .set_e_tag(
                            out.copy_part_result()
                                .and_then(|r| r.e_tag())
                                .map(str::to_owned),
                        )
                        .build(),
                );
                start = end + 1;
            }
            self.complete(to, &target, &upload_id, parts, size).await
        }
        .await;
        if result.is_err() {
            let _ = self
                .client
                .abort_multipart_upload()
                .bucket(&self.bucket)
                .key(&target)
                .upload_id(&upload_id)
                .send()
                .await;
        }
        result.map(|()| None)
    }

    pub(crate) async fn delete(&self, key: &str) -> Result<()> {
        let full = self.full_key(key)?;
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(full)
            .send()
            .await
            .map_err(|e| self.error("DeleteObject", Some(key), e))?;
        Ok(())
    }

    pub(crate) async fn abort_multipart_uploads(&self) -> Result<usize> {
        let mut aborted = 0;
        let (mut key_marker, mut id_marker) = (None::<String>, None::<String>);
        loop {
            let page = self
                .client
                .list_multipart_uploads()
                .bucket(&self.bucket)
                .prefix(&self.prefix)
                .set_key_marker(key_marker.clone())
                .set_upload_id_marker(id_marker.clone())
                .send()
                .await
                .map_err(|e| self.error("ListMultipartUploads", None, e))?;
            for upload in page.uploads() {
                let (Some(key), Some(id)) = (upload.key(), upload.upload_id()) else {
                    continue;
                };
                self.client
                    .abort_multipart_upload()
                    .bucket(&self.bucket)
                    .key(key)
                    .upload_id(id)
                    .send()
                    .await
                    .map_err(|e| self.error("AbortMultipartUpload", None, e))?;
                aborted += 1;
            }
            if !page.is_truncated().unwrap_or(false) {
                return Ok(aborted);
            }
            key_marker = page.next_key_marker().map(str::to_owned);
            id_marker = page.next_upload_id_marker().map(str::to_owned);
        }
    }

    fn read_error(&self, key: &str, e: std::io::Error) -> Error {
        Error::Io {
            op: "reading the body for",
            path: format!("{}{key}", self.uri()),
            source: e,
        }
    }
}

/// Whether objects of this class must be restored before reading.
pub fn is_archive_class(class: &str) -> bool {
    matches!(class, "GLACIER" | "DEEP_ARCHIVE")
}

/// The S3 API name of a storage class.
pub fn storage_class_name(class: S3StorageClass) -> &'static str {
    match class {
        S3StorageClass::Standard => "STANDARD",
        S3StorageClass::StandardIa => "STANDARD_IA",
        S3StorageClass::OnezoneIa => "ONEZONE_IA",
        S3StorageClass::IntelligentTiering => "INTELLIGENT_TIERING",
        S3StorageClass::GlacierIr => "GLACIER_IR",
        S3StorageClass::Glacier => "GLACIER",
        S3StorageClass::DeepArchive => "DEEP_ARCHIVE",
    }
}

fn check_length(key: &str, expected: u64, got: u64) -> Result<()> {
    if got == expected {
        return Ok(());
    }
    Err(Error::Io {
        op: "uploading",
        path: key.to_owned(),
        source: std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("expected {expected} bytes, the source gave {got}"),
        ),
    })
}

/// `bucket/key` with the key percent-encoded as CopyObject's `x-amz-copy-source` needs.
fn copy_source(bucket: &str, key: &str) -> String {
    let mut out = format!("{bucket}/");
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_source_encodes_everything_but_unreserved_and_slashes() {
        assert_eq!(copy_source("b", "a b/c+d%.bin"), "b/a%20b/c%2Bd%25.bin");
    }

    #[test]
    fn class_names_match_the_s3_api() {
        assert_eq!(
            storage_class_name(S3StorageClass::DeepArchive),
            "DEEP_ARCHIVE"
        );
        assert!(is_archive_class(storage_class_name(
            S3StorageClass::Glacier
        )));
        assert!(!is_archive_class(storage_class_name(
            S3StorageClass::GlacierIr
        )));
    }

    #[test]
    fn static_credentials_never_print_the_secret() {
        let creds = S3Credentials::Static {
            access_key_id: "AKIA".into(),
            secret_access_key: "very-secret".into(),
            session_token: None,
        };
        assert!(!format!("{creds:?}").contains("very-secret"));
    }
}
