//! Where a cluster keeps data too big for ZooKeeper: shard outputs and
//! results over the inline limit, and uploaded inputs. One object store per
//! cluster, named by `--store URL` and reached through the `object_store`
//! crate: `file:///path` (or a bare path) for one machine or a shared
//! filesystem, `s3://bucket/prefix` for clusters (the usual `AWS_*`
//! settings from the environment: `AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT`, `AWS_ALLOW_HTTP`).
//!
//! Names inside a store:
//! ```text
//! jobs/<job-id>/<shard>.e<epoch>.a<attempt>.<run>.out   a shard's output (written by its worker)
//! results/<job-id>/result.e<epoch>.<run>.out            a job's result (written by its master)
//! inputs/<upload-id>/<file name>                        files copied in by `submit --upload`
//! ```
//! Every write is create-only (`PutMode::Create`, S3's `If-None-Match: *`)
//! under a name no other writer uses (a run id per write), so nothing
//! committed is ever overwritten. A job's objects are removed by listing
//! its directories, which `object_store` matches by whole path segments:
//! job `a` never reaches the objects of job `a.b`.
//!
//! Every store call runs on a runtime of its own (two threads), never on
//! an actor's thread: a slow store must not stall the threads that drive
//! ZooKeeper sessions and QUIC links.

use std::ops::Range;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use futures::StreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The URL names no store this build can open.
    #[error("cannot use store {url:?}: {reason}")]
    Url {
        /// The URL given.
        url: String,
        /// Why not.
        reason: String,
    },
    /// An operation failed.
    #[error("store {url}: cannot {op} {name}: {source}")]
    Op {
        /// The store.
        url: String,
        /// What was tried.
        op: &'static str,
        /// The object.
        name: String,
        /// The store's answer.
        source: Box<object_store::Error>,
    },
    /// A name that is not a store object of this cluster (a peer's report,
    /// garbage in ZooKeeper).
    #[error("{name:?} is not a valid object name here: {reason}")]
    BadName {
        /// The name.
        name: String,
        /// Why.
        reason: String,
    },
    /// Local file access (uploads).
    #[error("cannot read {path}: {source}")]
    File {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// The store's runtime lost the task (a panic in the store client).
    #[error("store operation {0} did not finish")]
    Lost(&'static str),
}

impl StoreError {
    /// Whether a create-only write found the name taken.
    pub fn is_already_exists(&self) -> bool {
        matches!(self, StoreError::Op { source, .. } if matches!(**source, object_store::Error::AlreadyExists { .. }))
    }

    /// Whether the object does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, StoreError::Op { source, .. } if matches!(**source, object_store::Error::NotFound { .. }))
    }
}

/// The runtime every store call runs on: process-wide, never dropped (a
/// runtime must not be dropped from async code).
fn io_runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("ringleader-store")
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("cannot start the store's runtime: {e}"))
    })
}

/// The directory of nodes' marks ([`Store::probe`]).
pub const MARKS: &str = "nodes";

/// A cluster's object store. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<dyn ObjectStore>,
    root: ObjectPath,
    url: Arc<str>,
    local: bool,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("url", &self.url).finish()
    }
}

/// Whether `s` is one plain path segment (a job id, a file name).
fn plain_segment(s: &str) -> bool {
    !s.is_empty() && s != "." && s != ".." && !s.contains(['/', '\\', '\0'])
}

impl Store {
    /// Opens the store a URL names: `file:///path` or a bare path (made
    /// absolute, created if missing), or `s3://bucket[/prefix]` configured
    /// from the environment.
    pub fn open(url: &str) -> Result<Store, StoreError> {
        Self::open_with(url, &[])
    }

    /// [`Store::open`] with S3 settings given as `object_store` option
    /// names and values (`aws_endpoint`, `aws_access_key_id`, ...), which
    /// take precedence over the environment.
    pub fn open_with(url: &str, options: &[(&str, &str)]) -> Result<Store, StoreError> {
        let bad = |reason: String| StoreError::Url {
            url: url.to_string(),
            reason,
        };
        if !url.contains("://") {
            let path = std::path::absolute(url).map_err(|e| bad(e.to_string()))?;
            return Self::open_with(&format!("file://{}", path.display()), options);
        }
        let parsed = url::Url::parse(url).map_err(|e| bad(e.to_string()))?;
        match parsed.scheme() {
            "file" => {
                let path = parsed
                    .to_file_path()
                    .map_err(|()| bad("not an absolute local path".into()))?;
                std::fs::create_dir_all(&path)
                    .map_err(|e| bad(format!("cannot create {}: {e}", path.display())))?;
                let fs = object_store::local::LocalFileSystem::new_with_prefix(&path)
                    .map_err(|e| bad(e.to_string()))?;
                Ok(Store {
                    inner: Arc::new(fs),
                    root: ObjectPath::default(),
                    url: url.into(),
                    local: true,
                })
            }
            "s3" | "s3a" => {
                let bucket = parsed
                    .host_str()
                    .filter(|b| !b.is_empty())
                    .ok_or_else(|| bad("no bucket (want s3://bucket/prefix)".into()))?;
                let mut builder =
                    object_store::aws::AmazonS3Builder::from_env().with_bucket_name(bucket);
                for (k, v) in options {
                    let key = k
                        .parse::<object_store::aws::AmazonS3ConfigKey>()
                        .map_err(|e| bad(format!("option {k}: {e}")))?;
                    builder = builder.with_config(key, *v);
                }
                let s3 = builder.build().map_err(|e| {
                    bad(format!(
                        "{e} (set AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, and \
                             AWS_ENDPOINT with AWS_ALLOW_HTTP=true for a server of your own)"
                    ))
                })?;
                let root = ObjectPath::from(parsed.path().trim_matches('/'));
                Ok(Store {
                    inner: Arc::new(s3),
                    root,
                    url: url.into(),
                    local: false,
                })
            }
            other => Err(bad(format!(
                "the scheme {other}:// is not supported (use file:///path or s3://bucket/prefix)"
            ))),
        }
    }

    /// The URL it was opened with.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The URL of object `name` (what [`Store::open`] of the object's
    /// bucket, or a task's `open_input`, reads back).
    pub fn url_of(&self, name: &str) -> String {
        format!(
            "{}/{}",
            self.url.trim_end_matches('/'),
            name.trim_start_matches('/')
        )
    }

    /// Whether it is a directory of this host (other hosts cannot see it
    /// unless it is on a shared filesystem).
    pub fn is_local(&self) -> bool {
        self.local
    }

    fn path(&self, name: &str) -> ObjectPath {
        let mut p = self.root.clone();
        for part in name.split('/').filter(|s| !s.is_empty()) {
            p = p.clone().join(part);
        }
        p
    }

    fn op_err(&self, op: &'static str, name: &str) -> impl Fn(object_store::Error) -> StoreError {
        let url = self.url.to_string();
        let name = name.to_string();
        move |source| StoreError::Op {
            url: url.clone(),
            op,
            name: name.clone(),
            source: Box::new(source),
        }
    }

    /// Runs `f` on the store's runtime and waits for it from any runtime
    /// (or none).
    async fn run<T: Send + 'static>(
        &self,
        op: &'static str,
        f: impl std::future::Future<Output = Result<T, StoreError>> + Send + 'static,
    ) -> Result<T, StoreError> {
        let started = std::time::Instant::now();
        let res = io_runtime().spawn(f).await;
        crate::metrics::store_op_seconds(op).record(started.elapsed().as_secs_f64());
        res.map_err(|_| StoreError::Lost(op))?
    }

    /// Writes `bytes` as `name`, only if no object has that name.
    pub async fn put_new(&self, name: &str, bytes: impl Into<Bytes>) -> Result<(), StoreError> {
        let bytes: Bytes = bytes.into();
        let (inner, path, err) = (
            self.inner.clone(),
            self.path(name),
            self.op_err("write", name),
        );
        self.run("write", async move {
            let opts = PutOptions {
                mode: PutMode::Create,
                ..Default::default()
            };
            inner
                .put_opts(&path, PutPayload::from(bytes), opts)
                .await
                .map(|_| ())
                .map_err(err)
        })
        .await
    }

    /// Reads a whole object.
    pub async fn get(&self, name: &str) -> Result<Bytes, StoreError> {
        let (inner, path, err) = (
            self.inner.clone(),
            self.path(name),
            self.op_err("read", name),
        );
        self.run("read", async move {
            let got = inner.get(&path).await.map_err(&err)?;
            got.bytes().await.map_err(err)
        })
        .await
    }

    /// Reads bytes `range` of an object (clipped to its end).
    pub async fn get_range(&self, name: &str, range: Range<u64>) -> Result<Bytes, StoreError> {
        let (inner, path, err) = (
            self.inner.clone(),
            self.path(name),
            self.op_err("read", name),
        );
        self.run("read", async move {
            inner.get_range(&path, range).await.map_err(err)
        })
        .await
    }

    /// An object's size in bytes.
    pub async fn size(&self, name: &str) -> Result<u64, StoreError> {
        let (inner, path, err) = (
            self.inner.clone(),
            self.path(name),
            self.op_err("find", name),
        );
        self.run("find", async move {
            inner.head(&path).await.map(|m| m.size).map_err(err)
        })
        .await
    }

    /// Deletes one object; a missing one is not an error.
    pub async fn delete(&self, name: &str) -> Result<(), StoreError> {
        let (inner, path, err) = (
            self.inner.clone(),
            self.path(name),
            self.op_err("delete", name),
        );
        self.run("delete", async move {
            match inner.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(err(e)),
            }
        })
        .await
    }

    /// The objects under directory `dir` (`""` for all), as paths of the
    /// store (under its prefix) matched by whole segments.
    async fn list_paths(&self, dir: &str) -> Result<Vec<ObjectPath>, StoreError> {
        let (inner, prefix) = (self.inner.clone(), self.path(dir));
        let err = self.op_err("list", dir);
        self.run("list", async move {
            inner
                .list(Some(&prefix))
                .map(|m| m.map(|m| m.location))
                .collect::<Vec<_>>()
                .await
                .into_iter()
                .collect::<Result<_, _>>()
                .map_err(err)
        })
        .await
    }

    /// The names of the objects under directory `dir` (`""` for every
    /// object of the store), relative to the store's URL.
    pub async fn list(&self, dir: &str) -> Result<Vec<String>, StoreError> {
        let root = self.root.as_ref().to_string();
        Ok(self
            .list_paths(dir)
            .await?
            .into_iter()
            .map(|p| {
                let full = p.as_ref();
                full.strip_prefix(root.as_str())
                    .unwrap_or(full)
                    .trim_start_matches('/')
                    .to_string()
            })
            .collect())
    }

    /// Deletes every object under directory `dir` (matched by whole path
    /// segments) and returns how many.
    pub async fn delete_dir(&self, dir: &str) -> Result<usize, StoreError> {
        let names = self.list_paths(dir).await?;
        let inner = self.inner.clone();
        let del = self.op_err("delete", dir);
        self.run("delete", async move {
            let n = names.len();
            for p in names {
                match inner.delete(&p).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => return Err(del(e)),
                }
            }
            Ok(n)
        })
        .await
    }

    /// Writes and reads back a probe object, what a node checks at start
    /// so that a wrong URL, missing credentials or a read-only store are
    /// an error then rather than a failed job later, and leaves it as node
    /// `who`'s mark (its earlier marks go): a master that finds a worker's
    /// mark in its own store knows that they share it
    /// ([`Store::has_mark`]). Returns the mark.
    pub async fn probe(&self, who: &str) -> Result<String, StoreError> {
        let mark = uuid::Uuid::new_v4().simple().to_string();
        let name = Self::mark_name(who, &mark)?;
        let data = format!("ringleader node {who}").into_bytes();
        self.put_new(&name, data.clone()).await?;
        let back = self.get(&name).await?;
        if back.as_ref() != data.as_slice() {
            return Err(StoreError::BadName {
                name,
                reason: "the store returned other bytes than were written".into(),
            });
        }
        for old in self.list(&format!("{MARKS}/{who}")).await? {
            if old != name {
                self.delete(&old).await?;
            }
        }
        Ok(mark)
    }

    /// Whether node `who`'s mark `mark` ([`Store::probe`]) is in this store.
    pub async fn has_mark(&self, who: &str, mark: &str) -> Result<bool, StoreError> {
        match self.size(&Self::mark_name(who, mark)?).await {
            Ok(_) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Deletes node `who`'s mark (at a clean stop).
    pub async fn unmark(&self, who: &str, mark: &str) -> Result<(), StoreError> {
        self.delete(&Self::mark_name(who, mark)?).await
    }

    fn mark_name(who: &str, mark: &str) -> Result<String, StoreError> {
        for part in [who, mark] {
            if !plain_segment(part) {
                return Err(StoreError::BadName {
                    name: format!("{MARKS}/{who}/{mark}"),
                    reason: format!("{part:?} is not one plain path segment"),
                });
            }
        }
        Ok(format!("{MARKS}/{who}/{mark}"))
    }

    /// Copies a local file to `name` (multipart for big files), calling
    /// `progress` with the bytes sent so far.
    pub async fn upload(
        &self,
        file: &std::path::Path,
        name: &str,
        mut progress: impl FnMut(u64) + Send + 'static,
    ) -> Result<u64, StoreError> {
        use tokio::io::AsyncReadExt;
        let (inner, path) = (self.inner.clone(), self.path(name));
        let err = self.op_err("upload", name);
        let file = file.to_path_buf();
        self.run("upload", async move {
            let ferr = |source| StoreError::File {
                path: file.display().to_string(),
                source,
            };
            let mut f = tokio::fs::File::open(&file).await.map_err(ferr)?;
            let upload = inner.put_multipart(&path).await.map_err(&err)?;
            let mut w = object_store::WriteMultipart::new_with_chunk_size(upload, 8 << 20);
            let mut buf = vec![0u8; 1 << 20];
            let mut sent = 0u64;
            loop {
                let n = match f.read(&mut buf).await {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) => {
                        w.abort().await.ok();
                        return Err(ferr(e));
                    }
                };
                w.wait_for_capacity(4).await.map_err(&err)?;
                w.write(&buf[..n]);
                sent += n as u64;
                progress(sent);
            }
            w.finish().await.map_err(err)?;
            Ok(sent)
        })
        .await
    }

    /// The directory of the shard outputs of a job's `incarnation`
    /// (`jobs/<id>/<incarnation in hex>`; a job of an earlier version,
    /// incarnation 0, has `jobs/<id>`): a job submitted under the id of
    /// a collected one never shares a directory with it.
    pub fn job_dir(job: &str, incarnation: u64) -> Result<String, StoreError> {
        Self::checked("jobs", job, incarnation)
    }

    /// The directory of a job's result (as [`Store::job_dir`], under `results`).
    pub fn result_dir(job: &str, incarnation: u64) -> Result<String, StoreError> {
        Self::checked("results", job, incarnation)
    }

    fn checked(kind: &str, job: &str, incarnation: u64) -> Result<String, StoreError> {
        if plain_segment(job) {
            Ok(match incarnation {
                0 => format!("{kind}/{job}"),
                i => format!("{kind}/{job}/{i:016x}"),
            })
        } else {
            Err(StoreError::BadName {
                name: job.to_string(),
                reason: "a job id must be one plain path segment".into(),
            })
        }
    }

    /// A fresh name for a shard output of a job's `incarnation`: no
    /// other writer ever uses it.
    pub fn shard_output_name(
        (job, incarnation): (&str, u64),
        shard: &str,
        epoch: u64,
        attempt: u32,
    ) -> Result<String, StoreError> {
        Ok(format!(
            "{}/{shard}.e{epoch}.a{attempt}.{}.out",
            Self::job_dir(job, incarnation)?,
            uuid::Uuid::new_v4().simple()
        ))
    }

    /// A fresh name for the result of a job's `incarnation`.
    pub fn result_name((job, incarnation): (&str, u64), epoch: u64) -> Result<String, StoreError> {
        Ok(format!(
            "{}/result.e{epoch}.{}.out",
            Self::result_dir(job, incarnation)?,
            uuid::Uuid::new_v4().simple()
        ))
    }

    /// Checks that a name a worker reported is a shard output of the
    /// job's `incarnation`.
    pub fn check_shard_output(
        (job, incarnation): (&str, u64),
        name: &str,
    ) -> Result<(), StoreError> {
        let dir = Self::job_dir(job, incarnation)?;
        let file = name
            .strip_prefix(&dir)
            .and_then(|rest| rest.strip_prefix('/'))
            .filter(|f| plain_segment(f) && f.ends_with(".out"));
        match file {
            Some(_) => Ok(()),
            None => Err(StoreError::BadName {
                name: name.to_string(),
                reason: format!("not an output of job {job} (incarnation {incarnation:x})"),
            }),
        }
    }

    /// A blocking read of a range, for task code on the blocking pool.
    /// Must not be called from async code.
    pub fn get_range_blocking(&self, name: &str, range: Range<u64>) -> Result<Bytes, StoreError> {
        futures::executor::block_on(self.get_range(name, range))
    }

    /// A blocking size lookup, for task code on the blocking pool.
    pub fn size_blocking(&self, name: &str) -> Result<u64, StoreError> {
        futures::executor::block_on(self.size(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn names_are_whole_segments_and_reported_names_are_checked() {
        assert!(Store::job_dir("a.b", 0).is_ok());
        for bad in ["", ".", "..", "a/b", "a\\b"] {
            assert!(Store::job_dir(bad, 0).is_err(), "{bad:?}");
        }
        let n = Store::shard_output_name(("a.b", 0), "3-0", 2, 1).unwrap_or_default();
        assert!(
            n.starts_with("jobs/a.b/3-0.e2.a1.") && n.ends_with(".out"),
            "{n}"
        );
        assert!(Store::check_shard_output(("a.b", 0), &n).is_ok());
        assert!(
            Store::check_shard_output(("a", 0), &n).is_err(),
            "job a claims a.b's output"
        );
        for forged in [
            "jobs/a.b/../x.out",
            "results/a.b/r.out",
            "jobs/a.b/x/y.out",
            "jobs/a.b/x",
        ] {
            assert!(
                Store::check_shard_output(("a.b", 0), forged).is_err(),
                "{forged}"
            );
        }
    }

    /// Issue 29, finding 1: a job under the id of a collected one has a
    /// directory of its own; neither claims the other's outputs.
    #[test]
    fn each_incarnation_of_a_job_id_has_its_own_directory() {
        let n = Store::shard_output_name(("x", 0xab), "0-0", 1, 1).unwrap_or_default();
        assert!(
            n.starts_with("jobs/x/00000000000000ab/0-0.e1.a1.") && n.ends_with(".out"),
            "{n}"
        );
        assert!(Store::check_shard_output(("x", 0xab), &n).is_ok());
        assert!(Store::check_shard_output(("x", 0xac), &n).is_err());
        assert!(Store::check_shard_output(("x", 0), &n).is_err());
        let old = Store::shard_output_name(("x", 0), "0-0", 1, 1).unwrap_or_default();
        assert!(Store::check_shard_output(("x", 0xab), &old).is_err());
        let r = Store::result_name(("x", 0xab), 1).unwrap_or_default();
        assert!(
            r.starts_with("results/x/00000000000000ab/result.e1."),
            "{r}"
        );
    }

    #[test]
    fn a_local_store_writes_once_reads_ranges_and_deletes_by_segment() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store =
            Store::open(&dir.path().display().to_string()).unwrap_or_else(|e| panic!("{e}"));
        assert!(store.is_local());
        rt().block_on(async {
            store.probe("test").await.unwrap_or_else(|e| panic!("{e}"));
            store
                .put_new("jobs/a/x.out", b"hello world".to_vec())
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            let again = store
                .put_new("jobs/a/x.out", b"other".to_vec())
                .await
                .unwrap_err();
            assert!(again.is_already_exists(), "{again}");
            let r = store
                .get_range("jobs/a/x.out", 6..11)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(r.as_ref(), b"world");
            store
                .put_new("jobs/a.b/y.out", b"keep".to_vec())
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(store.delete_dir("jobs/a").await.unwrap_or_default(), 1);
            assert!(store.get("jobs/a/x.out").await.unwrap_err().is_not_found());
            assert_eq!(
                store
                    .get("jobs/a.b/y.out")
                    .await
                    .unwrap_or_default()
                    .as_ref(),
                b"keep"
            );
        });
        let bad = Store::open("ftp://x/y").unwrap_err();
        assert!(bad.to_string().contains("not supported"), "{bad}");
    }
}
