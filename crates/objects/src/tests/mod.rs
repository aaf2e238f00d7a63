//! Behaviour tests of the content store.
//!
//! The shared suite runs unchanged against every backend (in memory, local directory, S3 through
//! moto) so all adapters are held to one contract. Tests that need a backend's internals (files
//! on disk, pending S3 multipart uploads) follow it.

#![allow(clippy::unwrap_used)]

mod moto;

use std::io;
use std::path::{Path as FsPath, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::stream::{self, Stream, StreamExt, TryStreamExt};
use object_store::memory::InMemory;
use object_store::ObjectStore;
use sha2::{Digest as _, Sha256};

use crate::{ContentStore, ObjectDigest, ObjectError, ObjectErrorKind, S3Settings, PART_SIZE};
use crate::{PutReceipt, VerifiedStream};

use self::moto::MotoServer;

/// How a backend is expected to behave where backends legitimately differ.
struct Backend {
    name: &'static str,
    /// Key prefix the store was configured with, as it appears in listed keys.
    key_prefix: &'static str,
    /// Whether uploaded parts leave process memory as they go. The in-memory backend keeps every
    /// part until completion by nature, so the bounded-memory check cannot apply to it.
    parts_leave_memory: bool,
}

// ---------------------------------------------------------------------------------------------
// Helpers

/// Deterministic, position-dependent bytes, so reordered or dropped parts change the digest.
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

fn chunks_of(data: &Bytes, size: usize) -> impl Stream<Item = Result<Bytes, io::Error>> + Unpin {
    let pieces: Vec<_> =
        (0..data.len()).step_by(size).map(|start| Ok(data.slice(start..(start + size).min(data.len())))).collect();
    stream::iter(pieces)
}

/// Tracks how many bytes of input chunks are alive at once, to check memory stays bounded.
#[derive(Clone, Default)]
struct LiveBytes {
    live: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
}

struct TrackedBuffer {
    data: Vec<u8>,
    live: Arc<AtomicUsize>,
}

impl AsRef<[u8]> for TrackedBuffer {
    fn as_ref(&self) -> &[u8] {
        &self.data
    }
}

impl Drop for TrackedBuffer {
    fn drop(&mut self) {
        self.live.fetch_sub(self.data.len(), Ordering::SeqCst);
    }
}

impl LiveBytes {
    fn chunk(&self, data: Vec<u8>) -> Bytes {
        let now = self.live.fetch_add(data.len(), Ordering::SeqCst) + data.len();
        self.peak.fetch_max(now, Ordering::SeqCst);
        Bytes::from_owner(TrackedBuffer { data, live: Arc::clone(&self.live) })
    }

    fn peak(&self) -> usize {
        self.peak.load(Ordering::SeqCst)
    }
}

async fn keys_under(store: &ContentStore, dir: &str) -> Vec<String> {
    let prefix = store.prefix.child(dir);
    let mut keys: Vec<String> =
        store.store.list(Some(&prefix)).map_ok(|meta| meta.location.to_string()).try_collect().await.unwrap();
    keys.sort();
    keys
}

async fn all_keys(store: &ContentStore) -> Vec<String> {
    let prefix = (!store.prefix.as_ref().is_empty()).then(|| store.prefix.clone());
    let mut keys: Vec<String> =
        store.store.list(prefix.as_ref()).map_ok(|meta| meta.location.to_string()).try_collect().await.unwrap();
    keys.sort();
    keys
}

/// Reads a verified stream to its end, returning the bytes seen and the error that ended it.
async fn drain(mut stream: VerifiedStream) -> (Vec<u8>, Option<ObjectError>) {
    let mut seen = Vec::new();
    while let Some(item) = stream.next().await {
        match item {
            Ok(chunk) => seen.extend_from_slice(&chunk),
            Err(err) => {
                assert!(stream.next().await.is_none(), "the error is the last item");
                return (seen, Some(err));
            }
        }
    }
    (seen, None)
}

fn object_key_text(backend: &Backend, digest: &ObjectDigest) -> String {
    let hex = digest.to_string();
    format!("{}objects/{}/{}", backend.key_prefix, &hex[..2], &hex[2..])
}

// ---------------------------------------------------------------------------------------------
// The shared suite

async fn run_suite(store: &ContentStore, backend: &Backend) {
    round_trip(store, backend).await;
    identical_content_is_stored_once(store, backend).await;
    tampered_content_reads_as_corrupt(store, backend).await;
    failed_input_leaves_nothing(store, backend).await;
    cancelled_upload_is_cleaned_up(store, backend).await;
    large_stream_in_small_chunks(store, backend).await;
    concurrent_identical_uploads(store, backend).await;
    delete_and_missing_objects(store, backend).await;
    staging_collection(store, backend).await;
    listing_names_every_object(store, backend).await;
    assert_eq!(
        keys_under(store, "staging").await,
        Vec::<String>::new(),
        "{}: staging must be empty after the suite",
        backend.name
    );
}

async fn round_trip(store: &ContentStore, backend: &Backend) {
    let name = backend.name;
    let data = Bytes::from_static(b"governed artefact v1");
    let digest = store.put_bytes(data.clone()).await.unwrap();
    assert_eq!(digest, ObjectDigest::of(&data), "{name}");
    assert_eq!(store.get(&digest).await.unwrap(), data, "{name}");
    assert!(store.exists(&digest).await.unwrap(), "{name}");
    assert_eq!(store.size(&digest).await.unwrap(), data.len() as u64, "{name}");
    assert!(
        keys_under(store, "objects").await.contains(&object_key_text(backend, &digest)),
        "{name}: object stored under objects/<2 hex>/<62 hex>"
    );

    let stream = store.open_stream(&digest).await.unwrap();
    assert_eq!(stream.size(), data.len() as u64, "{name}");
    assert_eq!(stream.digest(), digest, "{name}");
    let (seen, err) = drain(stream).await;
    assert!(err.is_none(), "{name}: {err:?}");
    assert_eq!(seen, data, "{name}");

    // A small multi-chunk stream takes the direct path and must agree with put_bytes
    let medium = Bytes::from(pattern(1, 100_000));
    let receipt = store.put_stream(chunks_of(&medium, 7_000)).await.unwrap();
    assert_eq!(receipt, PutReceipt { digest: ObjectDigest::of(&medium), size: medium.len() as u64 }, "{name}");
    assert_eq!(store.get(&receipt.digest).await.unwrap(), medium, "{name}");

    // Empty objects are legitimate content too
    let empty = store.put_bytes(Bytes::new()).await.unwrap();
    assert_eq!(empty.to_string(), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", "{name}");
    assert!(store.get(&empty).await.unwrap().is_empty(), "{name}");
    let receipt = store.put_stream(stream::iter(Vec::<Result<Bytes, io::Error>>::new())).await.unwrap();
    assert_eq!((receipt.digest, receipt.size), (empty, 0), "{name}");
}

async fn identical_content_is_stored_once(store: &ContentStore, backend: &Backend) {
    let name = backend.name;
    let data = Bytes::from_static(b"the same bytes, twice");
    let before = keys_under(store, "objects").await;
    let first = store.put_bytes(data.clone()).await.unwrap();
    let second = store.put_bytes(data.clone()).await.unwrap();
    let streamed = store.put_stream(chunks_of(&data, 4)).await.unwrap();
    assert_eq!(first, second, "{name}");
    assert_eq!(streamed.digest, first, "{name}");
    let after = keys_under(store, "objects").await;
    assert_eq!(after.len(), before.len() + 1, "{name}: one object for identical content");

    // Large enough to go through staging both times; the second promotion finds the object
    // already in place
    let large = Bytes::from(pattern(2, 2 * PART_SIZE + 123));
    let a = store.put_stream(chunks_of(&large, 1 << 20)).await.unwrap();
    let b = store.put_stream(chunks_of(&large, 300_000)).await.unwrap();
    assert_eq!(a, b, "{name}");
    assert_eq!(a.digest, ObjectDigest::of(&large), "{name}");
    assert_eq!(
        keys_under(store, "objects").await.len(),
        before.len() + 2,
        "{name}: one object for identical streamed content"
    );
    assert_eq!(store.get(&a.digest).await.unwrap(), large, "{name}");
    assert!(keys_under(store, "staging").await.is_empty(), "{name}");
}

async fn tampered_content_reads_as_corrupt(store: &ContentStore, backend: &Backend) {
    let name = backend.name;
    let digest = store.put_bytes(Bytes::from_static(b"approved weights")).await.unwrap();
    // Overwrite the object behind the store's back, as bit rot or an intruder would
    store.store.put(&store.object_key(&digest), Bytes::from_static(b"swapped weights!").into()).await.unwrap();

    let err = store.get(&digest).await.unwrap_err();
    assert_eq!(err.kind(), ObjectErrorKind::Corrupt, "{name}: {err}");
    assert!(err.to_string().contains(&digest.to_string()), "{name}: {err}");

    let (seen, err) = drain(store.open_stream(&digest).await.unwrap()).await;
    assert_eq!(seen, b"swapped weights!", "{name}: data flows, then the verdict");
    let err = err.expect("a corrupt stream must end with an error");
    assert_eq!(err.kind(), ObjectErrorKind::Corrupt, "{name}: {err}");

    store.delete(&digest).await.unwrap();
}

async fn failed_input_leaves_nothing(store: &ContentStore, backend: &Backend) {
    let name = backend.name;
    let before = all_keys(store).await;

    // Fails after two full parts have been handed to the backend, so a multipart upload to
    // staging is in progress when the input breaks
    let chunk = 4 << 20;
    let mut items: Vec<Result<Bytes, io::Error>> = (0..3).map(|i| Ok(Bytes::from(pattern(10 + i, chunk)))).collect();
    items.push(Err(io::Error::other("client disconnected")));
    let err = store.put_stream(stream::iter(items)).await.unwrap_err();
    assert_eq!(err.kind(), ObjectErrorKind::Input, "{name}: {err}");
    assert!(err.to_string().contains("client disconnected"), "{name}: {err}");
    assert_eq!(all_keys(store).await, before, "{name}: nothing left after a failed upload");

    // Fails before a single part was full
    let items = vec![Ok(Bytes::from_static(b"a few bytes")), Err(io::Error::other("reset by peer"))];
    let err = store.put_stream(stream::iter(items)).await.unwrap_err();
    assert_eq!(err.kind(), ObjectErrorKind::Input, "{name}: {err}");
    assert_eq!(all_keys(store).await, before, "{name}");

    // Fails on the very first item
    let items = vec![Err::<Bytes, _>(io::Error::other("no data"))];
    let err = store.put_stream(stream::iter(items)).await.unwrap_err();
    assert_eq!(err.kind(), ObjectErrorKind::Input, "{name}: {err}");
    assert_eq!(all_keys(store).await, before, "{name}");
}

async fn cancelled_upload_is_cleaned_up(store: &ContentStore, backend: &Backend) {
    let name = backend.name;
    let before = all_keys(store).await;
    // Two parts go out, then the input stalls and the caller gives up, dropping the future
    let items: Vec<Result<Bytes, io::Error>> = (0..3).map(|i| Ok(Bytes::from(pattern(30 + i, 4 << 20)))).collect();
    let stalled = stream::iter(items).chain(stream::pending());
    let outcome = tokio::time::timeout(Duration::from_secs(2), store.put_stream(stalled)).await;
    assert!(outcome.is_err(), "{name}: the upload cannot finish");

    // The abort runs in the background, so give it a moment
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let now = all_keys(store).await;
        if now == before {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{name}: cancelled upload left {now:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn large_stream_in_small_chunks(store: &ContentStore, backend: &Backend) {
    let name = backend.name;
    const CHUNK: usize = 64 << 10;
    const CHUNKS: u64 = 320; // 20 MiB

    // Hash the content once without keeping it, so the upload below is the only holder
    // Each chunk is a shared base with its index stamped in front: position-dependent, and cheap
    // enough that the producer easily outpaces the backend, which is what makes the memory
    // bound below meaningful
    let base = pattern(100, CHUNK);
    let make_chunk = move |i: u64| {
        let mut chunk = base.clone();
        chunk[..8].copy_from_slice(&i.to_le_bytes());
        chunk
    };
    let mut hasher = Sha256::new();
    for i in 0..CHUNKS {
        hasher.update(make_chunk(i));
    }
    let expected = ObjectDigest::from_hasher(hasher);

    // Chunks are produced lazily and counted while alive
    let tracker = LiveBytes::default();
    let producer = tracker.clone();
    let input = stream::iter(0..CHUNKS).map(move |i| Ok::<_, io::Error>(producer.chunk(make_chunk(i))));
    let receipt = store.put_stream(input).await.unwrap();
    assert_eq!(receipt.digest, expected, "{name}");
    assert_eq!(receipt.size, CHUNKS * CHUNK as u64, "{name}");
    eprintln!("{name}: peak live input {} bytes", tracker.peak());
    if backend.parts_leave_memory {
        // The part being filled plus the parts in flight, and the chunk being split
        let bound = 3 * PART_SIZE + CHUNK;
        assert!(tracker.peak() <= bound, "{name}: peak {} bytes of input alive exceeds {bound}", tracker.peak());
    }

    assert_eq!(store.size(&expected).await.unwrap(), receipt.size, "{name}");
    let mut stream = store.open_stream(&expected).await.unwrap();
    let mut read_hasher = Sha256::new();
    let mut read = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        read += chunk.len() as u64;
        read_hasher.update(&chunk);
    }
    assert_eq!(read, receipt.size, "{name}");
    assert_eq!(ObjectDigest::from_hasher(read_hasher), expected, "{name}");
    assert_eq!(store.get(&expected).await.unwrap().len() as u64, receipt.size, "{name}");
    assert!(keys_under(store, "staging").await.is_empty(), "{name}");
    store.delete(&expected).await.unwrap();
}

async fn concurrent_identical_uploads(store: &ContentStore, backend: &Backend) {
    let name = backend.name;
    let before = keys_under(store, "objects").await;
    let data = Bytes::from(pattern(3, PART_SIZE + PART_SIZE / 2));
    let (a, b) =
        tokio::join!(store.put_stream(chunks_of(&data, 1 << 20)), store.put_stream(chunks_of(&data, 777_777)),);
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a, b, "{name}");
    assert_eq!(keys_under(store, "objects").await.len(), before.len() + 1, "{name}");
    assert_eq!(store.get(&a.digest).await.unwrap(), data, "{name}");
    assert!(keys_under(store, "staging").await.is_empty(), "{name}");
}

async fn delete_and_missing_objects(store: &ContentStore, backend: &Backend) {
    let name = backend.name;
    let digest = store.put_bytes(Bytes::from_static(b"short-lived")).await.unwrap();
    store.delete(&digest).await.unwrap();
    assert!(!store.exists(&digest).await.unwrap(), "{name}");
    for err in [
        store.get(&digest).await.unwrap_err(),
        store.open_stream(&digest).await.unwrap_err(),
        store.size(&digest).await.unwrap_err(),
    ] {
        assert_eq!(err.kind(), ObjectErrorKind::NotFound, "{name}: {err}");
        assert!(err.to_string().contains(&digest.to_string()), "{name}: {err}");
    }
    // Deleting again is not an error, whatever the backend reports
    store.delete(&digest).await.unwrap();

    let never = ObjectDigest::of(b"never stored");
    assert!(!store.exists(&never).await.unwrap(), "{name}");
    assert_eq!(store.get(&never).await.unwrap_err().kind(), ObjectErrorKind::NotFound, "{name}");
}

async fn staging_collection(store: &ContentStore, backend: &Backend) {
    let name = backend.name;
    // What an upload interrupted between completion and promotion leaves behind
    let orphan = store.new_staging_key();
    store.store.put(&orphan, Bytes::from_static(b"interrupted upload").into()).await.unwrap();
    let objects_before = keys_under(store, "objects").await;

    assert_eq!(
        store.collect_staging(Duration::from_secs(3600)).await.unwrap(),
        0,
        "{name}: a fresh staging object is kept"
    );
    assert_eq!(keys_under(store, "staging").await, vec![orphan.to_string()], "{name}");

    // S3 reports modification times in whole seconds, so age the orphan past one
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    assert_eq!(
        store.collect_staging(Duration::from_secs(1)).await.unwrap(),
        1,
        "{name}: an old staging object is removed"
    );
    assert!(keys_under(store, "staging").await.is_empty(), "{name}");
    assert_eq!(keys_under(store, "objects").await, objects_before, "{name}: collection never touches objects");
    assert_eq!(store.collect_staging(Duration::ZERO).await.unwrap(), 0, "{name}");
}

async fn listing_names_every_object(store: &ContentStore, backend: &Backend) {
    let name = backend.name;
    let listed: Vec<ObjectDigest> = store.list_objects().await.unwrap().iter().map(|o| o.digest).collect();
    let on_backend = keys_under(store, "objects").await;
    assert_eq!(listed.len(), on_backend.len(), "{name}: one listing entry per stored object");
    for digest in &listed {
        assert!(on_backend.contains(&object_key_text(backend, digest)), "{name}: {digest} is really stored");
    }
    let data = Bytes::from_static(b"listed after this write");
    let digest = store.put_bytes(data.clone()).await.unwrap();
    let after = store.list_objects().await.unwrap();
    let entry = after.iter().find(|o| o.digest == digest).expect("a new object is listed");
    assert_eq!(entry.size, data.len() as u64, "{name}");
    assert!(entry.last_modified_millis > 0, "{name}");
    store.delete(&digest).await.unwrap();
    assert!(!store.list_objects().await.unwrap().iter().any(|o| o.digest == digest), "{name}: deleted is unlisted");
}

// ---------------------------------------------------------------------------------------------
// Backends

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_memory_backend_passes_the_suite() {
    let store = ContentStore::in_memory();
    let backend = Backend { name: "memory", key_prefix: "", parts_leave_memory: false };
    run_suite(&store, &backend).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefixed_backend_passes_the_suite() {
    let store = ContentStore::with_backend(Arc::new(InMemory::new()), "/tenant-a/cas/").unwrap();
    let backend = Backend { name: "memory with prefix", key_prefix: "tenant-a/cas/", parts_leave_memory: false };
    run_suite(&store, &backend).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_backend_passes_the_suite() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("nested/objects-root");
    let store = ContentStore::local(&root).unwrap();
    assert!(root.is_dir(), "the directory is created");
    let backend = Backend { name: "local", key_prefix: "", parts_leave_memory: true };
    run_suite(&store, &backend).await;
    let partials: Vec<_> = files_in(&root).into_iter().filter(|p| p.to_string_lossy().contains('#')).collect();
    assert!(partials.is_empty(), "no partial upload files: {partials:?}");
}

#[test]
fn invalid_prefixes_and_settings_are_rejected() {
    let err = ContentStore::with_backend(Arc::new(InMemory::new()), "a//b").unwrap_err();
    assert_eq!(err.kind(), ObjectErrorKind::Config, "{err}");

    let mut settings = S3Settings {
        bucket: String::new(),
        endpoint: Some("http://127.0.0.1:9".to_string()),
        region: "us-east-1".to_string(),
        access_key_id: Some("key".to_string()),
        secret_access_key: Some("very-secret".to_string()),
        allow_http: true,
        prefix: String::new(),
    };
    let err = ContentStore::s3(&settings).unwrap_err();
    assert_eq!(err.kind(), ObjectErrorKind::Config, "{err}");
    assert_eq!(err.to_string(), "S3 bucket name is empty");

    settings.bucket = "bucket".to_string();
    settings.region = String::new();
    assert_eq!(ContentStore::s3(&settings).unwrap_err().kind(), ObjectErrorKind::Config);

    settings.region = "us-east-1".to_string();
    settings.access_key_id = None;
    let err = ContentStore::s3(&settings).unwrap_err();
    assert_eq!(err.kind(), ObjectErrorKind::Config, "a secret without a key: {err}");

    settings.access_key_id = Some("key".to_string());
    assert!(ContentStore::s3(&settings).is_ok());
    assert!(!format!("{settings:?}").contains("very-secret"), "Debug must not print the secret key");
}

#[test]
fn operations_are_send_for_use_in_servers() {
    // Request handlers run on a multi-threaded runtime, so every future and stream must be Send
    fn assert_send<T: Send>(_: T) {}
    fn assert_send_sync<T: Send + Sync + 'static>() {}
    let store = ContentStore::in_memory();
    let digest = ObjectDigest::of(b"x");
    assert_send(store.put_stream(stream::iter(Vec::<Result<Bytes, io::Error>>::new())));
    assert_send(store.put_bytes(Bytes::new()));
    assert_send(store.get(&digest));
    assert_send(store.open_stream(&digest));
    assert_send(store.collect_staging(Duration::ZERO));
    assert_send_sync::<ContentStore>();
    assert_send_sync::<ObjectError>();
    fn assert_stream_send<T: Stream + Send + 'static>() {}
    assert_stream_send::<VerifiedStream>();
}

// ---------------------------------------------------------------------------------------------
// Local directory specifics

fn files_in(dir: &FsPath) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

fn backdate(path: &FsPath, age: Duration) {
    let file = std::fs::File::options().write(true).open(path).unwrap();
    file.set_modified(SystemTime::now() - age).unwrap();
}

#[tokio::test]
async fn local_file_altered_on_disk_reads_as_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let store = ContentStore::local(dir.path()).unwrap();
    let data = Bytes::from(pattern(7, 300_000));
    let digest = store.put_bytes(data.clone()).await.unwrap();
    let hex = digest.to_string();
    let file = dir.path().join("objects").join(&hex[..2]).join(&hex[2..]);
    assert_eq!(std::fs::read(&file).unwrap(), data, "layout objects/<2>/<62>");

    // Same length, one bit flipped: only the hash can tell
    let mut altered = data.to_vec();
    altered[150_000] ^= 0x01;
    std::fs::write(&file, &altered).unwrap();
    let err = store.get(&digest).await.unwrap_err();
    assert_eq!(err.kind(), ObjectErrorKind::Corrupt, "{err}");
    let (seen, err) = drain(store.open_stream(&digest).await.unwrap()).await;
    assert_eq!(seen, altered);
    assert_eq!(err.unwrap().kind(), ObjectErrorKind::Corrupt);

    // Truncated
    std::fs::write(&file, &data[..1000]).unwrap();
    assert_eq!(store.get(&digest).await.unwrap_err().kind(), ObjectErrorKind::Corrupt);
    let (_, err) = drain(store.open_stream(&digest).await.unwrap()).await;
    assert_eq!(err.unwrap().kind(), ObjectErrorKind::Corrupt);

    // Restoring the content makes it verify again
    std::fs::write(&file, &data).unwrap();
    assert_eq!(store.get(&digest).await.unwrap(), data);
}

#[tokio::test]
async fn local_failed_stream_leaves_no_files() {
    let dir = tempfile::tempdir().unwrap();
    let store = ContentStore::local(dir.path()).unwrap();
    let mut items: Vec<Result<Bytes, io::Error>> = (0..3).map(|i| Ok(Bytes::from(pattern(20 + i, 4 << 20)))).collect();
    items.push(Err(io::Error::other("upstream closed")));
    let err = store.put_stream(stream::iter(items)).await.unwrap_err();
    assert_eq!(err.kind(), ObjectErrorKind::Input);
    // Includes the backend's hidden partial files, which listings never show
    assert_eq!(files_in(dir.path()), Vec::<PathBuf>::new());
}

#[tokio::test]
async fn local_collect_staging_removes_old_partial_uploads() {
    let dir = tempfile::tempdir().unwrap();
    let store = ContentStore::local(dir.path()).unwrap();
    let staging = dir.path().join("staging");
    std::fs::create_dir_all(&staging).unwrap();

    // A crash mid-upload leaves the backend's partial file; a crash before promotion leaves a
    // completed staging object
    let old_partial = staging.join(format!("{}#1", uuid::Uuid::new_v4()));
    let old_complete = staging.join(uuid::Uuid::new_v4().to_string());
    let fresh_partial = staging.join(format!("{}#1", uuid::Uuid::new_v4()));
    for path in [&old_partial, &old_complete, &fresh_partial] {
        std::fs::write(path, b"half an upload").unwrap();
    }
    backdate(&old_partial, Duration::from_secs(7200));
    backdate(&old_complete, Duration::from_secs(7200));
    let kept = store.put_bytes(Bytes::from_static(b"kept")).await.unwrap();

    let removed = store.collect_staging(Duration::from_secs(3600)).await.unwrap();
    assert_eq!(removed, 2);
    assert!(!old_partial.exists());
    assert!(!old_complete.exists());
    assert!(fresh_partial.exists(), "an upload that may still be running is kept");
    assert!(store.exists(&kept).await.unwrap());
}

// ---------------------------------------------------------------------------------------------
// S3 through moto

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_backend_passes_the_suite() {
    let Some(program) = MotoServer::locate() else {
        factory_testkit::missing("moto_server (pip install 'moto[server]'): the S3 adapter is untested");
        return;
    };
    let server = MotoServer::start(&program).await.unwrap();
    let bucket = "factory-objects";
    server.create_bucket(bucket).await.unwrap();

    let settings = S3Settings {
        bucket: bucket.to_string(),
        endpoint: Some(server.endpoint()),
        region: "us-east-1".to_string(),
        access_key_id: Some("testing".to_string()),
        secret_access_key: Some("testing".to_string()),
        allow_http: true,
        prefix: "tenant-a/cas".to_string(),
    };
    let store = ContentStore::s3(&settings).unwrap();
    let backend = Backend { name: "s3", key_prefix: "tenant-a/cas/", parts_leave_memory: true };
    run_suite(&store, &backend).await;
    assert_eq!(
        server.pending_multipart_uploads(bucket).await.unwrap(),
        0,
        "failed uploads must abort their multipart upload"
    );

    // The same bucket without a prefix is a separate keyspace
    let unprefixed = ContentStore::s3(&S3Settings { prefix: String::new(), ..settings }).unwrap();
    let digest = unprefixed.put_bytes(Bytes::from_static(b"root level")).await.unwrap();
    assert!(unprefixed.exists(&digest).await.unwrap());
    assert!(!store.exists(&digest).await.unwrap());
}
