//! The only code that talks to storage: URL parsing, listing, ranged reads and writes, for local
//! paths (`/dir`, `file:///dir`) and S3/MinIO (`s3://bucket/prefix`), all through `object_store`.
//!
//! The API is async (`Location`'s methods), for callers that run their own runtime (a server).
//! The rank commands use the blocking shim (`Location::blocking`, `block_on`): it drives the
//! I/O on one small tokio runtime owned by this module, from the calling (main) thread, so MPI
//! calls never share a thread with async code. Called from inside a runtime, the shim refuses
//! with an error instead of panicking.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    ClientOptions, ObjectStore, ObjectStoreExt, PutMode, PutPayload, RetryConfig, UpdateVersion,
    WriteMultipart,
};

use crate::error::{Error, Result};

/// Objects above this size are uploaded in parts.
const MULTIPART_THRESHOLD: usize = 16 << 20;
const MULTIPART_PART_SIZE: usize = 8 << 20;
/// Parts in flight at once per upload.
const MULTIPART_CONCURRENCY: usize = 4;

/// Bytes and requests this process has read from storage (for `training.phases` and logs).
static BYTES_READ: AtomicU64 = AtomicU64::new(0);
static READ_REQUESTS: AtomicU64 = AtomicU64::new(0);

/// How much this process has read.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Reads {
    pub bytes: u64,
    pub requests: u64,
}

impl Reads {
    /// What this process has read so far.
    pub fn so_far() -> Reads {
        Reads {
            bytes: BYTES_READ.load(Ordering::Relaxed),
            requests: READ_REQUESTS.load(Ordering::Relaxed),
        }
    }

    /// What was read between `earlier` and `self`.
    pub fn since(self, earlier: Reads) -> Reads {
        Reads {
            bytes: self.bytes - earlier.bytes,
            requests: self.requests - earlier.requests,
        }
    }
}

fn count_read(bytes: u64, requests: u64) {
    BYTES_READ.fetch_add(bytes, Ordering::Relaxed);
    READ_REQUESTS.fetch_add(requests, Ordering::Relaxed);
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("cannot start the I/O runtime")
    })
}

/// Run a storage future to completion on this module's runtime, from a thread that runs no
/// runtime of its own (the rank commands' main thread); inside one, an error (tokio would
/// panic): async callers use the async API.
pub fn block_on<T>(future: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    if tokio::runtime::Handle::try_current().is_ok() {
        return Err(Error::runtime(
            "storage: a blocking call from inside an async runtime (use the async API)",
        ));
    }
    runtime().block_on(future)
}

/// One object found under a dataset URL.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct FileRef {
    /// The object's key in its store (a local absolute path without the leading `/`).
    pub key: String,
    pub size: u64,
}

/// A parsed location: a store plus a prefix (a folder, or a single object).
#[derive(Clone)]
pub struct Location {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    /// How the user wrote it, for messages.
    url: String,
    /// `s3://bucket/` or `/`, to turn keys back into something a user recognises.
    display_root: String,
    /// Where an S3 location's server is, for error messages (never the credentials).
    endpoint: Option<String>,
    /// A folder inside this location that listings leave out (a model inside its dataset).
    skip: Option<Path>,
}

impl std::fmt::Debug for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.url)
    }
}

impl Location {
    /// Parse `/dir`, `dir`, `file:///dir` or `s3://bucket/prefix`. `flag` names the flag in errors.
    pub fn parse(url: &str, flag: &str) -> Result<Location> {
        if url.is_empty() {
            return Err(Error::usage(format!("{flag}: empty location")));
        }
        if let Some(rest) = url.strip_prefix("s3://") {
            return s3_location(url, rest, flag);
        }
        let local = match url.strip_prefix("file://") {
            Some(p) => p,
            None if url.contains("://") => {
                return Err(Error::usage(format!(
                    "{flag} {url}: unsupported scheme (use a local path, file:// or s3://)"
                )))
            }
            None => url,
        };
        let abs = std::path::absolute(local)
            .map(|p| normalize(&p))
            .map_err(|e| Error::usage(format!("{flag} {url}: {e}")))?;
        let prefix = Path::from_absolute_path(&abs)
            .map_err(|e| Error::usage(format!("{flag} {url}: {e}")))?;
        Ok(Location {
            // Deleting the last file of a folder removes the folder, as on S3, but only below
            // the location (`tidy_folders`): never the location's folder or one above it.
            store: Arc::new(LocalFileSystem::new()),
            prefix,
            url: url.to_string(),
            display_root: "/".into(),
            endpoint: None,
            skip: None,
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn is_s3(&self) -> bool {
        self.display_root.starts_with("s3://")
    }

    /// A key as the user would write it (`/data/x.parquet`, `s3://bucket/x.parquet`).
    pub fn display_key(&self, key: &str) -> String {
        format!("{}{}", self.display_root, key)
    }

    /// The key of `name` inside this location (a folder).
    pub fn child_key(&self, name: &str) -> String {
        let mut p = self.prefix.clone();
        for part in name.split('/').filter(|s| !s.is_empty()) {
            p = p.join(part);
        }
        p.to_string()
    }

    /// Whether `inner` is this location or a folder inside it (same store, same bucket).
    pub fn holds(&self, inner: &Location) -> bool {
        self.display_root == inner.display_root
            && self.endpoint == inner.endpoint
            && inner.prefix.prefix_match(&self.prefix).is_some()
    }

    /// Leave the folder `inner` out of this location's listings, if it is inside it (a model
    /// written into its own dataset's folder is not data). Returns whether it was.
    pub fn skip_folder(&mut self, inner: &Location) -> bool {
        let inside = self.holds(inner) && inner.prefix != self.prefix;
        if inside {
            self.skip = Some(inner.prefix.clone());
        }
        inside
    }

    /// The same operations, blocking (see the module documentation).
    pub fn blocking(&self) -> Blocking<'_> {
        Blocking(self)
    }

    /// The data files at this location: the object itself if it is one, else every object below
    /// it, skipping anything whose name (or a folder's) starts with `_` or `.`, sorted by key.
    pub async fn list_files(&self) -> Result<Vec<FileRef>> {
        {
            let mut files: Vec<FileRef> = Vec::new();
            let mut listed_any = false;
            let mut listing = self.store.list(Some(&self.prefix));
            while let Some(item) = listing.next().await {
                let meta = match item {
                    Ok(m) => m,
                    // A missing local folder lists as NotFound: no files. On S3 an empty prefix
                    // lists fine, so NotFound there means the bucket itself is missing.
                    Err(object_store::Error::NotFound { .. }) if !self.is_s3() => break,
                    Err(object_store::Error::NotFound { .. }) => {
                        return Err(Error::runtime(format!(
                            "cannot list {}: the bucket does not exist{}",
                            self.url,
                            self.at_endpoint()
                        )))
                    }
                    Err(e) => return Err(self.storage_error("list", e)),
                };
                listed_any = true;
                let skipped = self
                    .skip
                    .as_ref()
                    .is_some_and(|skip| meta.location.prefix_match(skip).is_some());
                let hidden = skipped
                    || meta
                        .location
                        .prefix_match(&self.prefix)
                        .map(|mut parts| parts.any(|p| is_hidden(p.as_ref())))
                        .unwrap_or(true);
                if !hidden {
                    files.push(FileRef {
                        key: meta.location.to_string(),
                        size: meta.size,
                    });
                }
            }
            // Nothing below the prefix: the URL may name a single object.
            if !listed_any {
                if let Ok(meta) = self.store.head(&self.prefix).await {
                    if !is_hidden(meta.location.filename().unwrap_or("")) {
                        files.push(FileRef {
                            key: meta.location.to_string(),
                            size: meta.size,
                        });
                    }
                }
            }
            files.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(files)
        }
    }

    /// Read `range` of object `key`.
    pub async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes> {
        let path = Path::from(key);
        let len = range.end - range.start;
        let bytes = self
            .store
            .get_range(&path, range)
            .await
            .map_err(|e| self.storage_error_key("read", key, e))?;
        count_read(len, 1);
        Ok(bytes)
    }

    /// Read several ranges of one object (adjacent ones may be merged into one request).
    pub async fn get_ranges(&self, key: &str, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        let path = Path::from(key);
        let parts = self
            .store
            .get_ranges(&path, ranges)
            .await
            .map_err(|e| self.storage_error_key("read", key, e))?;
        let len: u64 = ranges.iter().map(|r| r.end - r.start).sum();
        count_read(len, ranges.len() as u64);
        Ok(parts)
    }

    /// Read a whole object.
    pub async fn get(&self, key: &str) -> Result<Bytes> {
        {
            let path = Path::from(key);
            let result = self
                .store
                .get(&path)
                .await
                .map_err(|e| self.storage_error_key("read", key, e))?;
            let bytes = result
                .bytes()
                .await
                .map_err(|e| self.storage_error_key("read", key, e))?;
            count_read(bytes.len() as u64, 1);
            Ok(bytes)
        }
    }

    /// Whether object `key` exists.
    pub async fn exists(&self, key: &str) -> Result<bool> {
        match self.store.head(&Path::from(key)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.storage_error_key("check", key, e)),
        }
    }

    /// Write a whole object atomically (a reader sees the old or the new content, never half).
    /// Large objects go up in parts (S3 multipart upload; on disk, a temporary file renamed).
    pub async fn put(&self, key: &str, bytes: Bytes) -> Result<()> {
        let path = Path::from(key);
        {
            if bytes.len() <= MULTIPART_THRESHOLD {
                self.store
                    .put(&path, PutPayload::from_bytes(bytes))
                    .await
                    .map_err(|e| self.storage_error_key("write", key, e))?;
                return Ok(());
            }
            let upload = self
                .store
                .put_multipart(&path)
                .await
                .map_err(|e| self.storage_error_key("write", key, e))?;
            let mut writer = WriteMultipart::new_with_chunk_size(upload, MULTIPART_PART_SIZE);
            for part in bytes.chunks(MULTIPART_PART_SIZE) {
                writer
                    .wait_for_capacity(MULTIPART_CONCURRENCY)
                    .await
                    .map_err(|e| self.storage_error_key("write", key, e))?;
                writer.put(bytes.slice_ref(part));
            }
            writer
                .finish()
                .await
                .map_err(|e| self.storage_error_key("write", key, e))?;
            Ok(())
        }
    }

    /// Read a whole object and the tag that names this content of it (`None`: no such object).
    pub async fn get_tagged(&self, key: &str) -> Result<Option<(Bytes, Tag)>> {
        let result = match self.store.get(&Path::from(key)).await {
            Ok(r) => r,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(self.storage_error_key("read", key, e)),
        };
        let tag = Tag::of(&result.meta);
        let bytes = result
            .bytes()
            .await
            .map_err(|e| self.storage_error_key("read", key, e))?;
        count_read(bytes.len() as u64, 1);
        Ok(Some((bytes, tag)))
    }

    /// The tag of object `key` as it is now (`None`: no such object).
    pub async fn tag(&self, key: &str) -> Result<Option<Tag>> {
        match self.store.head(&Path::from(key)).await {
            Ok(meta) => Ok(Some(Tag::of(&meta))),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.storage_error_key("check", key, e)),
        }
    }

    /// Replace object `key` (small: one request) only if it is still as `expected` said
    /// (`None`: only if there is no such object): `Ok(false)` if another writer changed it
    /// first, and nothing was written. On S3 the server decides (`If-Match`,
    /// `If-None-Match`); on disk the writers of one file take turns through a lock the
    /// kernel releases when a process dies (`flock` on a hidden `.<name>.lock` beside it).
    pub async fn put_if(&self, key: &str, bytes: Bytes, expected: Option<&Tag>) -> Result<bool> {
        let path = Path::from(key);
        if self.is_s3() {
            let mode = match expected {
                None => PutMode::Create,
                Some(tag) => PutMode::Update(UpdateVersion {
                    e_tag: tag.e_tag.clone(),
                    version: tag.version.clone(),
                }),
            };
            let bytes_again = bytes.clone();
            let put = self
                .store
                .put_opts(&path, PutPayload::from_bytes(bytes), mode.into())
                .await;
            return match put {
                Ok(_) => Ok(true),
                Err(object_store::Error::Precondition { .. })
                | Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
                // An S3 server without conditional writes (AWS before 2024, old MinIO, some
                // others answer 501): publish as before, saying what is not protected.
                Err(e) if not_implemented(&e) => {
                    log::warn!(
                        "the S3 server{} does not support conditional writes (If-Match, If-None-Match): {} is written without them, so two jobs publishing there at once would not be detected",
                        self.at_endpoint(),
                        self.display_key(key)
                    );
                    self.put(key, bytes_again).await.map(|()| true)
                }
                Err(e) => Err(self.storage_error_key("write", key, e)),
            };
        }
        let _turn = local_lock(key).map_err(|e| {
            Error::runtime(format!(
                "cannot lock {} for writing: {e}",
                self.display_key(key)
            ))
        })?;
        if self.tag(key).await?.as_ref() != expected {
            return Ok(false);
        }
        self.store
            .put(&path, PutPayload::from_bytes(bytes))
            .await
            .map_err(|e| self.storage_error_key("write", key, e))?;
        Ok(true)
    }

    /// Check that objects can be written (and deleted) here, before a long job relies on it:
    /// writes and deletes the hidden object `name`. Errors name `flag`; a local path that
    /// refuses (permissions, a file where a folder should be) is a usage error.
    pub async fn probe_write(&self, name: &str, flag: &str) -> Result<()> {
        let key = self.child_key(name);
        let path = Path::from(key.as_str());
        let refused = |e: object_store::Error| {
            // On disk a refusal is the path's (permissions, a file in the way); on S3 as for
            // every other request (credentials, bucket, endpoint: exit 1).
            let usage = !self.is_s3()
                && matches!(
                    e,
                    object_store::Error::PermissionDenied { .. }
                        | object_store::Error::Unauthenticated { .. }
                        | object_store::Error::NotFound { .. }
                        | object_store::Error::Generic { .. }
                );
            let text = format!(
                "{flag} {}: cannot write there{}: {}",
                self.url,
                self.at_endpoint(),
                describe(&e)
            );
            match usage {
                true => Error::usage(text),
                false => Error::runtime(text),
            }
        };
        self.store
            .put(&path, PutPayload::from_static(b"funksvd write probe"))
            .await
            .map_err(refused)?;
        match self.store.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {
                self.tidy_folders(&key);
                Ok(())
            }
            Err(e) => Err(refused(e)),
        }
    }

    /// Delete object `key` (no error if it is not there).
    pub async fn delete(&self, key: &str) -> Result<()> {
        match self.store.delete(&Path::from(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {
                self.tidy_folders(key);
                Ok(())
            }
            Err(e) => Err(self.storage_error_key("delete", key, e)),
        }
    }

    /// On disk, after object `key` was deleted: its folders that are now empty, up to but not
    /// including this location's own folder (a folder is no object: on S3 it goes with its last
    /// object). Never above the location: a user's empty working folder is not ours to remove.
    fn tidy_folders(&self, key: &str) {
        if self.is_s3() {
            return;
        }
        let top = std::path::PathBuf::from(format!("/{}", self.prefix));
        let mut folder = std::path::PathBuf::from(format!("/{key}"));
        while folder.pop() && folder.starts_with(&top) && folder != top {
            if std::fs::remove_dir(&folder).is_err() {
                break;
            }
        }
    }

    /// Every object below the folder `name` of this location (hidden ones included), as
    /// (path relative to that folder, key) pairs; for bookkeeping folders such as `_versions`.
    pub async fn list_below(&self, name: &str) -> Result<Vec<(String, String)>> {
        let folder = Path::from(self.child_key(name));
        {
            let listed: Vec<_> = match self.store.list(Some(&folder)).try_collect().await {
                Ok(v) => v,
                Err(object_store::Error::NotFound { .. }) => Vec::new(),
                Err(e) => return Err(self.storage_error("list", e)),
            };
            let start = folder.as_ref().len() + 1;
            Ok(listed
                .into_iter()
                .map(|m| m.location.to_string())
                .filter(|k| k.len() > start)
                .map(|k| (k[start..].to_string(), k))
                .collect())
        }
    }

    /// ` at endpoint http://...` for S3 locations, empty for local ones.
    fn at_endpoint(&self) -> String {
        match &self.endpoint {
            Some(e) => format!(" (endpoint {e})"),
            None => String::new(),
        }
    }

    fn storage_error(&self, action: &str, e: object_store::Error) -> Error {
        Error::runtime(format!(
            "cannot {action} {}{}: {}",
            self.url,
            self.at_endpoint(),
            describe(&e)
        ))
    }

    fn storage_error_key(&self, action: &str, key: &str, e: object_store::Error) -> Error {
        let what = self.display_key(key);
        let at = self.at_endpoint();
        match e {
            object_store::Error::NotFound { .. } => {
                Error::runtime(format!("cannot {action} {what}{at}: not found"))
            }
            e => Error::runtime(format!("cannot {action} {what}{at}: {}", describe(&e))),
        }
    }
}

/// `Location`'s operations for the rank commands: each blocks until done (see `block_on`).
pub struct Blocking<'a>(&'a Location);

impl Blocking<'_> {
    pub fn list_files(&self) -> Result<Vec<FileRef>> {
        block_on(self.0.list_files())
    }

    pub fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes> {
        block_on(self.0.get_range(key, range))
    }

    pub fn get(&self, key: &str) -> Result<Bytes> {
        block_on(self.0.get(key))
    }

    pub fn exists(&self, key: &str) -> Result<bool> {
        block_on(self.0.exists(key))
    }

    pub fn put(&self, key: &str, bytes: Bytes) -> Result<()> {
        block_on(self.0.put(key, bytes))
    }

    pub fn delete(&self, key: &str) -> Result<()> {
        block_on(self.0.delete(key))
    }

    pub fn get_tagged(&self, key: &str) -> Result<Option<(Bytes, Tag)>> {
        block_on(self.0.get_tagged(key))
    }

    pub fn tag(&self, key: &str) -> Result<Option<Tag>> {
        block_on(self.0.tag(key))
    }

    pub fn put_if(&self, key: &str, bytes: Bytes, expected: Option<&Tag>) -> Result<bool> {
        block_on(self.0.put_if(key, bytes, expected))
    }

    pub fn probe_write(&self, name: &str, flag: &str) -> Result<()> {
        block_on(self.0.probe_write(name, flag))
    }

    pub fn list_below(&self, name: &str) -> Result<Vec<(String, String)>> {
        block_on(self.0.list_below(name))
    }
}

/// An object written as a stream (`std::io::Write`, for encoders such as Parquet's writer) and
/// made visible whole by `finish`: up to `MULTIPART_THRESHOLD` bytes it is one put; beyond, the
/// bytes go up in parts as they come (S3 multipart upload; on disk a staging file renamed at
/// the end), so memory stays bounded whatever the object's size. Dropped unfinished, the upload
/// is abandoned: nothing appears under the key.
pub struct ObjectWriter<'a> {
    loc: &'a Location,
    key: String,
    buffer: Vec<u8>,
    upload: Option<WriteMultipart>,
    /// Bytes accepted so far.
    written: u64,
}

impl Location {
    /// A writer of object `key` (see `ObjectWriter`); blocking, for the rank commands.
    pub fn writer(&self, key: &str) -> ObjectWriter<'_> {
        ObjectWriter {
            loc: self,
            key: key.to_string(),
            buffer: Vec::new(),
            upload: None,
            written: 0,
        }
    }
}

impl ObjectWriter<'_> {
    /// Bytes accepted so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Send the buffered bytes on as parts of the upload (started on the first call).
    fn ship(&mut self) -> Result<()> {
        let (loc, key) = (self.loc, self.key.as_str());
        let upload = &mut self.upload;
        let buffer = &mut self.buffer;
        block_on(async move {
            if upload.is_none() {
                let started = loc
                    .store
                    .put_multipart(&Path::from(key))
                    .await
                    .map_err(|e| loc.storage_error_key("write", key, e))?;
                *upload = Some(WriteMultipart::new_with_chunk_size(
                    started,
                    MULTIPART_PART_SIZE,
                ));
            }
            let writer = upload.as_mut().expect("started above");
            writer
                .wait_for_capacity(MULTIPART_CONCURRENCY)
                .await
                .map_err(|e| loc.storage_error_key("write", key, e))?;
            writer.write(buffer);
            buffer.clear();
            Ok(())
        })
    }

    /// Make the object visible, whole.
    pub fn finish(mut self) -> Result<()> {
        let (loc, key) = (self.loc, self.key.clone());
        let buffer = std::mem::take(&mut self.buffer);
        match self.upload.take() {
            None => block_on(loc.put(&key, buffer.into())),
            Some(mut writer) => block_on(async move {
                writer.write(&buffer);
                writer
                    .finish()
                    .await
                    .map(|_| ())
                    .map_err(|e| loc.storage_error_key("write", &key, e))
            }),
        }
    }
}

impl std::io::Write for ObjectWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.buffer.extend_from_slice(bytes);
        self.written += bytes.len() as u64;
        if self.buffer.len() >= MULTIPART_THRESHOLD {
            self.ship().map_err(std::io::Error::other)?;
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for ObjectWriter<'_> {
    fn drop(&mut self) {
        if let Some(writer) = self.upload.take() {
            // Best effort: an upload left open is removed by the store's own cleanup rules.
            let _ = block_on(async {
                writer
                    .abort()
                    .await
                    .map_err(|e| Error::runtime(e.to_string()))
            });
        }
    }
}

/// What one content of an object was: its entity tag and, where the store keeps versions, its
/// version (compared by `Location::put_if`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Tag {
    e_tag: Option<String>,
    version: Option<String>,
}

impl Tag {
    fn of(meta: &object_store::ObjectMeta) -> Tag {
        Tag {
            e_tag: meta.e_tag.clone(),
            version: meta.version.clone(),
        }
    }
}

/// Hold the lock of local object `key` (a file `/key`) until the returned file is dropped.
fn local_lock(key: &str) -> std::io::Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    let target = std::path::PathBuf::from(format!("/{key}"));
    let (Some(dir), Some(name)) = (target.parent(), target.file_name()) else {
        return Err(std::io::Error::other("not a file path"));
    };
    std::fs::create_dir_all(dir)?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(format!(".{}.lock", name.to_string_lossy())))?;
    // SAFETY: flock on a descriptor this function owns; the lock goes with the descriptor.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(file)
}

/// Resolve `.` and `..` without touching the file system (the path may not exist yet).
fn normalize(path: &std::path::Path) -> std::path::PathBuf {
    use std::path::Component;
    let mut out = std::path::PathBuf::new();
    for part in path.components() {
        match part {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// Spark/Hadoop markers (`_SUCCESS`, `_metadata`, `.crc`) and our own staging areas.
pub fn is_hidden(name: &str) -> bool {
    name.starts_with('_') || name.starts_with('.')
}

/// object_store errors, led by what a user can act on; never includes credentials (object_store
/// does not put them in messages).
fn describe(e: &object_store::Error) -> String {
    let text = chain_text(e);
    let code = text
        .split_once("<Code>")
        .and_then(|(_, rest)| rest.split_once("</Code>"))
        .map(|(code, _)| code.to_string());
    // The XML body adds nothing once its code is known.
    let details = match text.split_once("<?xml") {
        Some((head, _)) => head.trim_end_matches([' ', ':']).to_string(),
        None => text.clone(),
    };
    let hint = match code.as_deref() {
        Some("NoSuchBucket") => Some("the bucket does not exist"),
        Some("SignatureDoesNotMatch") => {
            Some("the secret key is wrong (AWS_SECRET_ACCESS_KEY or MINIO_SECRET_KEY)")
        }
        Some("InvalidAccessKeyId") => {
            Some("the server does not know the access key (AWS_ACCESS_KEY_ID or MINIO_ACCESS_KEY)")
        }
        Some("AccessDenied") => Some("access denied for these credentials"),
        _ if text.contains("Connection refused") || text.contains("tcp connect error") => {
            Some("cannot connect to the endpoint (is the server up, is AWS_ENDPOINT_URL right?)")
        }
        _ if text.contains("timed out") || text.contains("timeout") => Some(
            "the endpoint did not answer in time (FUNKSVD_S3_TIMEOUT sets the seconds to wait, default 10)",
        ),
        _ => None,
    };
    match (hint, code) {
        (Some(hint), Some(code)) => format!("{hint} ({code}); {details}"),
        (Some(hint), None) => format!("{hint}; {details}"),
        (None, _) => details,
    }
}

/// The error and its sources, each once: the source chain is where the useful part (HTTP status,
/// S3 error code, connection refused) lives.
fn chain_text(e: &object_store::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let t = s.to_string();
        if !parts.iter().any(|p| p.contains(&t)) {
            parts.push(t);
        }
        source = s.source();
    }
    parts.join(": ")
}

/// The server does not implement what the request asked (HTTP 501, S3 `NotImplemented`).
fn not_implemented(e: &object_store::Error) -> bool {
    let text = chain_text(e);
    text.contains("501 Not Implemented") || text.contains("<Code>NotImplemented</Code>")
}

fn env_first(names: &[&str]) -> Option<String> {
    env_named(names).map(|(_, v)| v)
}

/// The first of `names` that is set and not empty, and its value.
fn env_named<'n>(names: &[&'n str]) -> Option<(&'n str, String)> {
    names.iter().find_map(|&n| {
        std::env::var(n)
            .ok()
            .filter(|v| !v.is_empty())
            .map(|v| (n, v))
    })
}

/// Seconds an S3 request may wait for the next bytes (and a request with its retries may last)
/// before it fails, `FUNKSVD_S3_TIMEOUT` [10]: an endpoint that takes connections and never
/// answers fails in seconds, naming itself, and a large transfer that keeps moving is never cut.
pub const S3_TIMEOUT_VAR: &str = "FUNKSVD_S3_TIMEOUT";
const S3_TIMEOUT_DEFAULT: f64 = 10.0;

fn s3_timeout() -> Result<Duration> {
    let Some(text) = env_first(&[S3_TIMEOUT_VAR]) else {
        return Ok(Duration::from_secs_f64(S3_TIMEOUT_DEFAULT));
    };
    match text.trim().parse::<f64>() {
        Ok(seconds) if seconds > 0.0 && seconds <= 3600.0 => Ok(Duration::from_secs_f64(seconds)),
        _ => Err(Error::usage(format!(
            "{S3_TIMEOUT_VAR}={text}: must be a number of seconds above 0 and at most 3600"
        ))),
    }
}

/// The S3 endpoint from the environment, checked (`None`: AWS itself). MinIO deployments often
/// give `host:port` only: that means `http://host:port`.
fn s3_endpoint() -> Result<Option<String>> {
    let Some((name, value)) = env_named(&["AWS_ENDPOINT_URL", "AWS_ENDPOINT", "MINIO_ENDPOINT"])
    else {
        return Ok(None);
    };
    let url = match value.contains("://") {
        true => value.clone(),
        false => format!("http://{value}"),
    };
    let bad = |why: &str| {
        Err(Error::usage(format!(
            "{name}={value}: {why} (expected http://host:port or https://host)"
        )))
    };
    let Some((scheme, rest)) = url.split_once("://") else {
        return bad("not a URL");
    };
    if scheme != "http" && scheme != "https" {
        return bad("the scheme must be http or https");
    }
    let authority = rest.split('/').next().unwrap_or("");
    let (host, port) = match authority.rsplit_once(':') {
        // `[::1]` is a host without a port.
        Some((h, p)) if !authority.ends_with(']') => (h, Some(p)),
        _ => (authority, None),
    };
    let host_ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-._[]:".contains(c));
    if !host_ok || url.chars().any(char::is_whitespace) {
        return bad("not a URL");
    }
    if port.is_some_and(|p| p.parse::<u16>().is_err()) {
        return bad("the port is not a number from 0 to 65535");
    }
    Ok(Some(url))
}

/// HTTPS to S3 goes through rustls with ring's primitives (see Cargo.toml: reqwest has no
/// provider of its own). Installed once per process; one already installed is kept.
fn use_ring_for_tls() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn s3_location(url: &str, rest: &str, flag: &str) -> Result<Location> {
    use_ring_for_tls();
    let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(Error::usage(format!("{flag} {url}: no bucket name")));
    }
    let region = env_first(&["AWS_REGION", "AWS_DEFAULT_REGION", "MINIO_REGION"])
        .unwrap_or_else(|| "us-east-1".into());
    let key_id = env_first(&["AWS_ACCESS_KEY_ID", "MINIO_ACCESS_KEY"]);
    let secret = env_first(&["AWS_SECRET_ACCESS_KEY", "MINIO_SECRET_KEY"]);
    // Without keys, only an explicit ambient identity (Kubernetes IRSA, ECS task roles) is
    // used; we never probe the instance metadata service on a guess.
    let ambient = env_first(&[
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    ])
    .is_some();
    let mut builder = match (&key_id, &secret) {
        (Some(id), Some(secret)) => AmazonS3Builder::new()
            .with_access_key_id(id)
            .with_secret_access_key(secret),
        _ if ambient => AmazonS3Builder::from_env(),
        _ => {
            return Err(Error::usage(format!(
                "{flag} {url}: no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY \
                 (or MINIO_ACCESS_KEY and MINIO_SECRET_KEY)"
            )))
        }
    };
    let timeout = s3_timeout()?;
    builder = builder
        .with_bucket_name(bucket)
        .with_region(region)
        .with_virtual_hosted_style_request(false)
        .with_retry(RetryConfig {
            backoff: object_store::BackoffConfig {
                init_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(2),
                base: 2.0,
            },
            max_retries: 3,
            // No retry starts after this: a dead endpoint fails after about one timeout.
            retry_timeout: timeout,
        })
        .with_client_options(
            ClientOptions::new()
                .with_connect_timeout(timeout.min(Duration::from_secs(5)))
                // Silence (no bytes for this long) fails a request; a long transfer does not.
                .with_read_timeout(timeout)
                .with_timeout(Duration::from_secs(3600)),
        );
    let endpoint = s3_endpoint()?;
    if let Some(endpoint) = &endpoint {
        builder = builder
            .with_allow_http(endpoint.starts_with("http://"))
            .with_endpoint(endpoint);
    }
    if let Some(token) = env_first(&["AWS_SESSION_TOKEN"]) {
        builder = builder.with_token(token);
    }
    let store = builder
        .build()
        .map_err(|e| Error::usage(format!("{flag} {url}: {}", describe(&e))))?;
    let prefix = Path::parse(key.trim_end_matches('/'))
        .map_err(|e| Error::usage(format!("{flag} {url}: {e}")))?;
    Ok(Location {
        store: Arc::new(store),
        prefix,
        url: url.to_string(),
        display_root: format!("s3://{bucket}/"),
        endpoint: Some(endpoint.unwrap_or_else(|| "AWS S3".into())),
        skip: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deleting_the_last_file_empties_folders_below_the_location_never_the_location_or_above() {
        let work = std::env::temp_dir().join(format!("funksvd-tidy-{}", std::process::id()));
        let model = work.join("empty-parent/model");
        let loc = Location::parse(model.to_str().unwrap(), "--model").unwrap();
        let key = loc.child_key("_versions/v1/users/part-00000.parquet");
        block_on(loc.put(&key, Bytes::from_static(b"x"))).unwrap();
        block_on(loc.delete(&key)).unwrap();
        assert!(
            !model.join("_versions").exists(),
            "the empty folders below go"
        );
        assert!(model.is_dir(), "the location's own folder stays");
        // The probe of a first model, in a user's empty working folder: that folder stays.
        block_on(loc.probe_write("_versions/.probe", "--model")).unwrap();
        assert!(model.is_dir() && work.join("empty-parent").is_dir());
        std::fs::remove_dir_all(&work).unwrap();
    }

    #[test]
    fn an_object_written_as_a_stream_appears_whole_or_not_at_all() {
        use std::io::Write;
        let dir = std::env::temp_dir().join(format!("funksvd-writer-{}", std::process::id()));
        let loc = Location::parse(dir.to_str().unwrap(), "--out").unwrap();
        // Small: one put. Large (past the threshold): parts, then one rename.
        for (name, len) in [
            ("small", 1000usize),
            ("large", MULTIPART_THRESHOLD * 2 + 12345),
        ] {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
            let mut w = loc.writer(&loc.child_key(name));
            for piece in bytes.chunks(1 << 20) {
                w.write_all(piece).unwrap();
            }
            assert_eq!(w.written(), len as u64);
            w.finish().unwrap();
            assert_eq!(std::fs::read(dir.join(name)).unwrap(), bytes, "{name}");
        }
        // Dropped before `finish`, after parts went up: nothing under the name.
        let mut w = loc.writer(&loc.child_key("abandoned"));
        w.write_all(&vec![1u8; MULTIPART_THRESHOLD + 1]).unwrap();
        drop(w);
        let left: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("abandoned"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn https_clients_get_ring_for_tls() {
        // reqwest comes without a TLS provider of its own (Cargo.toml): without ring's
        // installed, no HTTPS client can be built, and every s3:// URL on AWS would fail (the
        // tests' local S3 speaks plain HTTP, so only this test sees it).
        use_ring_for_tls();
        reqwest::Client::builder()
            .https_only(true)
            .build()
            .expect("an HTTPS client");
    }

    #[test]
    fn hidden_names_are_spark_markers_and_dotfiles() {
        assert!(is_hidden("_SUCCESS"));
        assert!(is_hidden(".part-0.crc"));
        assert!(!is_hidden("part-0.parquet"));
    }

    #[test]
    fn listing_skips_markers_and_walks_nested_folders() {
        let dir = std::env::temp_dir().join(format!("funksvd-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("date=2026-11-01")).unwrap();
        std::fs::create_dir_all(dir.join("_tmp")).unwrap();
        std::fs::write(dir.join("date=2026-11-01/a.csv"), "x").unwrap();
        std::fs::write(dir.join("b.csv"), "yy").unwrap();
        std::fs::write(dir.join("_SUCCESS"), "").unwrap();
        std::fs::write(dir.join(".b.csv.crc"), "").unwrap();
        std::fs::write(dir.join("_tmp/c.csv"), "").unwrap();
        let loc = Location::parse(dir.to_str().unwrap(), "--data").unwrap();
        let files = loc.blocking().list_files().unwrap();
        let names: Vec<&str> = files
            .iter()
            .map(|f| f.key.rsplit('/').next().unwrap())
            .collect();
        assert_eq!(names, vec!["b.csv", "a.csv"]);
        assert_eq!(files[0].size, 2);
        // A folder inside is left out on request (a model inside its dataset).
        let mut data = Location::parse(dir.to_str().unwrap(), "--data").unwrap();
        let inner = Location::parse(dir.join("date=2026-11-01").to_str().unwrap(), "--model");
        assert!(data.skip_folder(&inner.unwrap()));
        let left: Vec<String> = data
            .blocking()
            .list_files()
            .unwrap()
            .into_iter()
            .map(|f| f.key)
            .collect();
        assert!(left.len() == 1 && left[0].ends_with("/b.csv"), "{left:?}");
        assert!(!data.skip_folder(&loc), "the same folder is not inside");
        let elsewhere = Location::parse("/elsewhere", "--model").unwrap();
        assert!(!data.skip_folder(&elsewhere));
        // A single file is a dataset of one file.
        let one = Location::parse(dir.join("b.csv").to_str().unwrap(), "--data").unwrap();
        assert_eq!(one.blocking().list_files().unwrap().len(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn relative_and_dotted_paths_resolve() {
        let loc = Location::parse("/a/b/../c/./d", "--data").unwrap();
        assert_eq!(loc.child_key("x"), "a/c/d/x");
    }

    #[test]
    fn endpoints_and_timeouts_from_the_environment_are_checked() {
        // One test sets the variables, so no other test sees them half set.
        let with = |name: &str, value: &str, f: &dyn Fn()| {
            std::env::set_var(name, value);
            f();
            std::env::remove_var(name);
        };
        with("MINIO_ENDPOINT", "minio:9000", &|| {
            assert_eq!(s3_endpoint().unwrap().as_deref(), Some("http://minio:9000"))
        });
        with("AWS_ENDPOINT_URL", "https://s3.example.com/", &|| {
            assert_eq!(
                s3_endpoint().unwrap().as_deref(),
                Some("https://s3.example.com/")
            )
        });
        for bad in [
            "not a url",
            "ftp://x",
            "http://",
            "http://host:port",
            "http://h:99999",
        ] {
            with("AWS_ENDPOINT_URL", bad, &|| {
                let err = s3_endpoint().unwrap_err();
                assert_eq!(err.exit_code(), 2);
                assert!(err.to_string().starts_with("AWS_ENDPOINT_URL="), "{err}");
            });
        }
        assert_eq!(s3_timeout().unwrap(), Duration::from_secs(10));
        with(S3_TIMEOUT_VAR, "2.5", &|| {
            assert_eq!(s3_timeout().unwrap(), Duration::from_millis(2500))
        });
        for bad in ["0", "-1", "soon", "1e9"] {
            with(S3_TIMEOUT_VAR, bad, &|| {
                let err = s3_timeout().unwrap_err();
                assert!(err.to_string().contains(S3_TIMEOUT_VAR), "{err}");
            });
        }
    }

    #[test]
    fn a_conditional_write_on_disk_succeeds_only_over_what_the_writer_saw() {
        let dir = std::env::temp_dir().join(format!("funksvd-put-if-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let loc = Location::parse(dir.to_str().unwrap(), "--model").unwrap();
        let io = loc.blocking();
        let key = loc.child_key("model.json");
        let put = |text: &'static str, expected: Option<&Tag>| {
            io.put_if(&key, Bytes::from_static(text.as_bytes()), expected)
                .unwrap()
        };
        assert!(put("first", None), "absent, as expected");
        assert!(!put("second", None), "no longer absent");
        let (bytes, seen) = io.get_tagged(&key).unwrap().unwrap();
        assert_eq!(&bytes[..], b"first");
        assert!(put("third", Some(&seen)));
        assert!(!put("fourth", Some(&seen)), "changed since it was seen");
        assert_eq!(&io.get(&key).unwrap()[..], b"third");
        assert_eq!(io.tag(&loc.child_key("none")).unwrap(), None);
        // The probe writes and deletes; a file where the folder should be is refused as usage.
        io.probe_write("_versions/.probe", "--model").unwrap();
        assert!(!dir.join("_versions/.probe").exists());
        let blocked =
            Location::parse(dir.join("model.json/x").to_str().unwrap(), "--model").unwrap();
        let err = blocked
            .blocking()
            .probe_write(".probe", "--model")
            .unwrap_err();
        assert_eq!(err.exit_code(), 2, "{err}");
        assert!(err.to_string().contains("cannot write there"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn unknown_scheme_is_a_usage_error_naming_the_flag() {
        let err = Location::parse("hdfs://x/y", "--data").unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("--data"));
    }

    #[test]
    fn the_blocking_shim_refuses_to_run_inside_a_runtime() {
        let loc = Location::parse("/tmp", "--data").unwrap();
        let inside = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(async { loc.blocking().exists("tmp/x") });
        let err = inside.unwrap_err();
        assert!(err.to_string().contains("use the async API"), "{err}");
        // The async API works there.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        assert!(!rt.block_on(loc.exists("tmp/funksvd-no-such-file")).unwrap());
    }
}
