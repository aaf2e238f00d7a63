//! The content-addressed store itself: where objects live, how they get there atomically, and
//! how reads are verified.
//!
//! Everything the factory keeps as a blob (datasets, model weights, evaluation outputs) is stored
//! once under its SHA-256, so the same bytes uploaded twice cost one object and a digest recorded
//! in the audit log keeps pointing at exactly the bytes that were governed. The backend is any
//! `object_store` implementation: a local directory for single-node installs, S3-compatible
//! storage for sites that have it.
//!
//! Key layout under the configured prefix:
//!
//! * `objects/<first 2 hex>/<remaining 62 hex>`: finished objects, only ever written whole.
//! * `staging/<uuid>`: large uploads in progress; promoted to `objects/` once their digest is
//!   known, deleted on failure, and swept by [`ContentStore::collect_staging`] if the process
//!   died mid-upload.

use std::fmt;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::stream::{Stream, StreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{MultipartUpload, ObjectStore, PutPayload, PutPayloadMut};
use sha2::{Digest as _, Sha256};
use tokio::task::JoinSet;

use crate::digest::ObjectDigest;
use crate::error::{ObjectError, ObjectErrorKind, Result};
use crate::verify::VerifiedStream;

/// Size of each multipart part, and the threshold above which a streamed upload goes through
/// staging. 5 MiB is the smallest part S3 accepts; all parts but the last are exactly this size
/// because some S3-compatible services (Cloudflare R2) reject uneven parts.
pub const PART_SIZE: usize = 5 * 1024 * 1024;

/// Parts uploaded concurrently. Together with the part being filled this bounds the memory of a
/// streamed upload to `(MAX_PARTS_IN_FLIGHT + 1) * PART_SIZE`, whatever the object's size.
const MAX_PARTS_IN_FLIGHT: usize = 2;

const OBJECTS_DIR: &str = "objects";
const STAGING_DIR: &str = "staging";

/// Connection settings for an S3-compatible bucket.
#[derive(Clone, Default)]
pub struct S3Settings {
    /// Bucket holding the store.
    pub bucket: String,
    /// Endpoint URL of an S3-compatible service (MinIO, Ceph, R2, ...); `None` means AWS itself.
    pub endpoint: Option<String>,
    /// Region to sign requests for; S3-compatible services usually accept `us-east-1`.
    pub region: String,
    /// Static access key; when both keys are `None` ambient credentials are used (web identity,
    /// container or instance metadata).
    pub access_key_id: Option<String>,
    /// Static secret key, paired with `access_key_id`.
    pub secret_access_key: Option<String>,
    /// Permit a plain-HTTP endpoint, for services on a trusted local network or in tests.
    pub allow_http: bool,
    /// Key prefix inside the bucket, so several stores can share one bucket.
    pub prefix: String,
}

impl fmt::Debug for S3Settings {
    // Hand-written so the secret key never reaches logs through a `{:?}`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Settings")
            .field("bucket", &self.bucket)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &self.secret_access_key.as_ref().map(|_| "<redacted>"))
            .field("allow_http", &self.allow_http)
            .field("prefix", &self.prefix)
            .finish()
    }
}

/// What a streamed upload stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PutReceipt {
    /// Digest of the uploaded content, which is now its address.
    pub digest: ObjectDigest,
    /// Number of bytes uploaded.
    pub size: u64,
}

/// One finished object as a listing sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredObject {
    pub digest: ObjectDigest,
    pub size: u64,
    pub last_modified_millis: i64,
}

/// Content-addressed object store over any `object_store` backend.
#[derive(Clone)]
pub struct ContentStore {
    pub(crate) store: Arc<dyn ObjectStore>,
    pub(crate) prefix: Path,
    // The local backend hides its half-written multipart files from listings, so collecting
    // orphans there needs the directory they live in
    local_staging_dir: Option<PathBuf>,
}

impl fmt::Debug for ContentStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ContentStore")
            .field("backend", &self.store.to_string())
            .field("prefix", &self.prefix.as_ref())
            .finish_non_exhaustive()
    }
}

impl ContentStore {
    /// A store in a local directory, created if missing.
    pub fn local(dir: &FsPath) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| {
            ObjectError::new(ObjectErrorKind::Backend, format!("cannot create object directory {}: {e}", dir.display()))
                .with_source(e)
        })?;
        let backend =
            LocalFileSystem::new_with_prefix(dir).map_err(|e| ObjectError::backend("open directory", None, e))?;
        let mut store = Self::with_backend(Arc::new(backend), "")?;
        store.local_staging_dir = Some(dir.join(STAGING_DIR));
        Ok(store)
    }

    /// A store in an S3-compatible bucket. A custom endpoint is addressed path-style
    /// (`endpoint/bucket/key`), which every S3-compatible service supports; AWS itself is
    /// addressed virtual-hosted style, which it recommends.
    pub fn s3(config: &S3Settings) -> Result<Self> {
        if config.bucket.trim().is_empty() {
            return Err(ObjectError::new(ObjectErrorKind::Config, "S3 bucket name is empty"));
        }
        if config.region.trim().is_empty() {
            return Err(ObjectError::new(ObjectErrorKind::Config, "S3 region is empty"));
        }
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(&config.bucket)
            .with_region(&config.region)
            .with_allow_http(config.allow_http);
        builder = match &config.endpoint {
            Some(endpoint) => builder.with_endpoint(endpoint).with_virtual_hosted_style_request(false),
            None => builder.with_virtual_hosted_style_request(true),
        };
        if let Some(key) = &config.access_key_id {
            builder = builder.with_access_key_id(key);
        }
        if let Some(secret) = &config.secret_access_key {
            builder = builder.with_secret_access_key(secret);
        }
        let backend = builder.build().map_err(|e| {
            ObjectError::new(ObjectErrorKind::Config, format!("invalid S3 settings for bucket {}: {e}", config.bucket))
                .with_source(e)
        })?;
        Self::with_backend(Arc::new(backend), &config.prefix)
    }

    /// A store held in process memory, for tests and ephemeral runs.
    pub fn in_memory() -> Self {
        Self { store: Arc::new(InMemory::new()), prefix: Path::default(), local_staging_dir: None }
    }

    /// A store over an already-built backend, for backends this crate has no constructor for.
    /// `prefix` is a `/`-separated key prefix; leading and trailing slashes are ignored.
    pub fn with_backend(store: Arc<dyn ObjectStore>, prefix: &str) -> Result<Self> {
        let prefix = Path::parse(prefix.trim_matches('/')).map_err(|e| {
            ObjectError::new(ObjectErrorKind::Config, format!("invalid object key prefix {prefix:?}: {e}"))
                .with_source(e)
        })?;
        Ok(Self { store, prefix, local_staging_dir: None })
    }

    /// Stores an in-memory buffer and returns its digest.
    pub async fn put_bytes(&self, data: Bytes) -> Result<ObjectDigest> {
        let digest = ObjectDigest::of(&data);
        self.put_whole(&digest, data.into()).await?;
        Ok(digest)
    }

    /// Stores a stream of chunks with bounded memory and returns its digest and size.
    ///
    /// Small inputs (under one [`PART_SIZE`]) are written directly once hashed. Larger ones are
    /// uploaded in parts to a staging key while being hashed, then copied to their digest key
    /// only if no object is there yet. If the input or the backend fails, the staging upload is
    /// aborted and nothing appears under any digest. If the returned future is dropped midway
    /// (a client disconnects, a timeout fires) the abort runs in a background task instead.
    pub async fn put_stream<S, E>(&self, input: S) -> Result<PutReceipt>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    {
        let mut staged = StagingGuard(None);
        let result = self.put_stream_inner(input, &mut staged.0).await;
        if result.is_err() {
            // Awaited here rather than left to the guard, so the caller sees a clean store as
            // soon as the error is returned
            if let Some(upload) = staged.0.take() {
                upload.abort().await;
            }
        }
        result
    }

    async fn put_stream_inner<S, E>(&self, mut input: S, staged: &mut Option<StagedUpload>) -> Result<PutReceipt>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    {
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut pending = PutPayloadMut::new();

        while let Some(chunk) = input.next().await {
            let mut chunk = chunk.map_err(|e| ObjectError::input(e.into()))?;
            hasher.update(&chunk);
            size += chunk.len() as u64;
            // Cut the input into exact PART_SIZE parts without copying: Bytes::split_to shares
            // the allocation
            while !chunk.is_empty() {
                let room = PART_SIZE - pending.content_length();
                let piece = chunk.split_to(room.min(chunk.len()));
                pending.push(piece);
                if pending.content_length() == PART_SIZE {
                    let part = std::mem::take(&mut pending).freeze();
                    let upload = match staged {
                        Some(upload) => upload,
                        None => staged.insert(StagedUpload::start(self).await?),
                    };
                    upload.send(part).await?;
                }
            }
        }

        let digest = ObjectDigest::from_hasher(hasher);
        match staged {
            // The whole input fitted in memory below one part: write it in one atomic put,
            // skipping staging and its extra copy
            None => self.put_whole(&digest, pending.freeze()).await?,
            Some(upload) => {
                if !pending.is_empty() {
                    upload.send(pending.freeze()).await?;
                }
                upload.complete().await?;
                self.promote(&upload.key, &digest).await?;
                // Promotion deleted the staging object; nothing is left to abort
                *staged = None;
            }
        }
        Ok(PutReceipt { digest, size })
    }

    /// Writes a fully hashed payload straight to its digest key. A single put is atomic on every
    /// backend (the local one writes a temporary file and renames it), so no staging is needed.
    async fn put_whole(&self, digest: &ObjectDigest, payload: PutPayload) -> Result<()> {
        let key = self.object_key(digest);
        // Identical content is already stored: skip the upload rather than rewrite the same bytes
        if self.key_exists(&key, digest).await? {
            return Ok(());
        }
        self.store.put(&key, payload).await.map_err(|e| ObjectError::backend("write", Some(digest), e))?;
        Ok(())
    }

    /// Moves a completed staging object to its digest key, then removes the staging object.
    async fn promote(&self, staging: &Path, digest: &ObjectDigest) -> Result<()> {
        let target = self.object_key(digest);
        match self.store.copy_if_not_exists(staging, &target).await {
            Ok(()) => {}
            // Content addressing makes a concurrent or earlier writer of this digest equivalent
            // to this one, so losing the race is success
            Err(object_store::Error::AlreadyExists { .. }) | Err(object_store::Error::Precondition { .. }) => {}
            // Plain S3 has no conditional copy without extra configuration. An unconditional
            // copy is still safe: a server-side copy replaces the target atomically and any
            // object already there holds the same bytes
            Err(object_store::Error::NotSupported { .. }) | Err(object_store::Error::NotImplemented) => {
                if !self.key_exists(&target, digest).await? {
                    self.store
                        .copy(staging, &target)
                        .await
                        .map_err(|e| ObjectError::backend("copy staged upload to", Some(digest), e))?;
                }
            }
            Err(e) => return Err(ObjectError::backend("copy staged upload to", Some(digest), e)),
        }
        // The object is safely in place; a staging object that fails to delete is only litter
        // that collect_staging will sweep, so it does not fail the upload
        let _ = self.store.delete(staging).await;
        Ok(())
    }

    /// Reads a whole object into memory, verifying its digest.
    pub async fn get(&self, digest: &ObjectDigest) -> Result<Bytes> {
        let found = self
            .store
            .get(&self.object_key(digest))
            .await
            .map_err(|e| ObjectError::backend("read", Some(digest), e))?;
        let data = found.bytes().await.map_err(|e| ObjectError::backend("read", Some(digest), e))?;
        let actual = ObjectDigest::of(&data);
        if actual != *digest {
            return Err(ObjectError::corrupt(digest, &actual));
        }
        Ok(data)
    }

    /// Opens an object as a stream whose last item is a `Corrupt` error if the content does not
    /// match `digest`; fails up front with `NotFound` if there is no such object.
    pub async fn open_stream(&self, digest: &ObjectDigest) -> Result<VerifiedStream> {
        let found = self
            .store
            .get(&self.object_key(digest))
            .await
            .map_err(|e| ObjectError::backend("read", Some(digest), e))?;
        let size = found.meta.size;
        Ok(VerifiedStream::new(found.into_stream(), *digest, size))
    }

    /// Whether an object is stored under `digest` (its content is not verified).
    pub async fn exists(&self, digest: &ObjectDigest) -> Result<bool> {
        self.key_exists(&self.object_key(digest), digest).await
    }

    /// Size in bytes of the object stored under `digest`.
    pub async fn size(&self, digest: &ObjectDigest) -> Result<u64> {
        let meta = self
            .store
            .head(&self.object_key(digest))
            .await
            .map_err(|e| ObjectError::backend("inspect", Some(digest), e))?;
        Ok(meta.size)
    }

    /// Deletes the object under `digest`. Deleting an absent object succeeds, because S3 does
    /// not report absence on delete and callers should not depend on which backend they have.
    pub async fn delete(&self, digest: &ObjectDigest) -> Result<()> {
        match self.store.delete(&self.object_key(digest)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(ObjectError::backend("delete", Some(digest), e)),
        }
    }

    /// Deletes staging objects last modified more than `older_than` ago and returns how many
    /// were removed. Uploads still in progress keep refreshing their staging object, so the
    /// cutoff must comfortably exceed the time one part takes to upload.
    ///
    /// On S3, parts of an interrupted multipart upload are invisible to listings; a bucket
    /// lifecycle rule (`AbortIncompleteMultipartUpload`) is what reclaims them.
    pub async fn collect_staging(&self, older_than: Duration) -> Result<usize> {
        let Some(cutoff) = SystemTime::now().checked_sub(older_than) else {
            return Ok(0);
        };
        let cutoff_millis =
            cutoff.duration_since(UNIX_EPOCH).map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)).unwrap_or(0);

        let staging = self.prefix.child(STAGING_DIR);
        let mut listing = self.store.list(Some(&staging));
        let mut removed = 0;
        while let Some(meta) = listing.next().await {
            let meta = meta.map_err(|e| ObjectError::backend("list staging objects", None, e))?;
            if meta.last_modified.timestamp_millis() > cutoff_millis {
                continue;
            }
            match self.store.delete(&meta.location).await {
                Ok(()) => removed += 1,
                // Another collector or the upload's own cleanup got there first
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(ObjectError::backend("delete staging object", None, e)),
            }
        }

        if let Some(dir) = &self.local_staging_dir {
            removed += collect_local_partials(dir.clone(), cutoff).await?;
        }
        Ok(removed)
    }

    /// Every finished object with its size and last-modified time (milliseconds since the
    /// epoch), for the orphan collector. Keys that are not a well-formed digest are skipped:
    /// they are not ours to judge.
    pub async fn list_objects(&self) -> Result<Vec<StoredObject>> {
        let root = self.prefix.child(OBJECTS_DIR);
        let mut listing = self.store.list(Some(&root));
        let mut objects = Vec::new();
        while let Some(meta) = listing.next().await {
            let meta = meta.map_err(|e| ObjectError::backend("list objects", None, e))?;
            let parts: Vec<_> = meta.location.parts().collect();
            let [.., fan_out, rest] = parts.as_slice() else { continue };
            let Ok(digest) = format!("{}{}", fan_out.as_ref(), rest.as_ref()).parse::<ObjectDigest>() else {
                continue;
            };
            objects.push(StoredObject {
                digest,
                size: meta.size,
                last_modified_millis: meta.last_modified.timestamp_millis(),
            });
        }
        Ok(objects)
    }

    pub(crate) fn object_key(&self, digest: &ObjectDigest) -> Path {
        let hex = digest.to_hex();
        // Two hex characters of fan-out keep directories (and S3 listing pages) small
        self.prefix.child(OBJECTS_DIR).child(&hex[..2]).child(&hex[2..])
    }

    pub(crate) fn new_staging_key(&self) -> Path {
        self.prefix.child(STAGING_DIR).child(uuid::Uuid::new_v4().to_string())
    }

    async fn key_exists(&self, key: &Path, digest: &ObjectDigest) -> Result<bool> {
        match self.store.head(key).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(ObjectError::backend("inspect", Some(digest), e)),
        }
    }
}

/// Removes the local backend's half-written multipart files (`<uuid>#<n>`) older than `cutoff`.
/// They are what a crash mid-upload leaves behind, and the backend's listing never shows them.
async fn collect_local_partials(dir: PathBuf, cutoff: SystemTime) -> Result<usize> {
    let swept = tokio::task::spawn_blocking(move || -> std::io::Result<usize> {
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e),
        };
        let mut removed = 0;
        for entry in entries {
            let entry = entry?;
            // Completed staging objects were handled through the listing; only partial uploads
            // carry the backend's '#' suffix
            if !entry.file_name().to_string_lossy().contains('#') {
                continue;
            }
            let meta = entry.metadata()?;
            if !meta.is_file() || meta.modified()? > cutoff {
                continue;
            }
            match std::fs::remove_file(entry.path()) {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(removed)
    })
    .await;
    match swept {
        Ok(Ok(removed)) => Ok(removed),
        Ok(Err(e)) => {
            Err(ObjectError::new(ObjectErrorKind::Backend, format!("cannot sweep local staging directory: {e}"))
                .with_source(e))
        }
        Err(e) => Err(ObjectError::new(ObjectErrorKind::Backend, format!("local staging sweep did not finish: {e}"))
            .with_source(e)),
    }
}

/// A multipart upload to a staging key with a bounded number of parts in flight.
struct StagedUpload {
    store: Arc<dyn ObjectStore>,
    key: Path,
    upload: Box<dyn MultipartUpload>,
    // Parts run as tasks so they make progress while the caller waits on its input stream
    in_flight: JoinSet<object_store::Result<()>>,
}

impl StagedUpload {
    async fn start(owner: &ContentStore) -> Result<Self> {
        let key = owner.new_staging_key();
        let upload =
            owner.store.put_multipart(&key).await.map_err(|e| ObjectError::backend("start staged upload", None, e))?;
        Ok(Self { store: Arc::clone(&owner.store), key, upload, in_flight: JoinSet::new() })
    }

    /// Queues a part, first waiting for a free slot: this back-pressure is what bounds memory.
    async fn send(&mut self, part: PutPayload) -> Result<()> {
        while self.in_flight.len() >= MAX_PARTS_IN_FLIGHT {
            self.join_one().await?;
        }
        self.in_flight.spawn(self.upload.put_part(part));
        Ok(())
    }

    /// Waits for every part, then completes the upload, making the staging object visible.
    async fn complete(&mut self) -> Result<()> {
        while !self.in_flight.is_empty() {
            self.join_one().await?;
        }
        self.upload.complete().await.map_err(|e| ObjectError::backend("complete staged upload", None, e))?;
        Ok(())
    }

    async fn join_one(&mut self) -> Result<()> {
        match self.in_flight.join_next().await {
            None | Some(Ok(Ok(()))) => Ok(()),
            Some(Ok(Err(e))) => Err(ObjectError::backend("upload part", None, e)),
            Some(Err(e)) => {
                Err(ObjectError::new(ObjectErrorKind::Backend, format!("part upload task did not finish: {e}"))
                    .with_source(e))
            }
        }
    }

    /// Best-effort cleanup after a failure: cancels running parts, aborts the multipart upload,
    /// and deletes the staging key in case the upload had already completed. Errors are ignored
    /// because the original failure is what the caller needs, and collect_staging (or an S3
    /// lifecycle rule) catches anything left.
    async fn abort(mut self) {
        self.in_flight.shutdown().await;
        let _ = self.upload.abort().await;
        let _ = self.store.delete(&self.key).await;
    }
}

/// Aborts a staged upload whose `put_stream` future was dropped before finishing. Without it a
/// cancelled upload would leave an S3 multipart upload open until a lifecycle rule reaps it.
struct StagingGuard(Option<StagedUpload>);

impl Drop for StagingGuard {
    fn drop(&mut self) {
        if let Some(upload) = self.0.take() {
            // Outside a runtime nothing can be awaited; collect_staging and lifecycle rules
            // remain the safety net
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(upload.abort());
            }
        }
    }
}
