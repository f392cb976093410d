//! Submitting jobs and fetching results from Rust. A [`Client`] finds the
//! master through `/master` in ZooKeeper, talks to it over QUIC with a
//! client certificate, and follows a new master after a failover: every
//! request is idempotent (a submission carries its client-chosen job id).

use std::marker::PhantomData;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_bytes::ByteBuf;
use tokio::sync::Mutex;

use crate::coord::{self, CoordError, Layout, ZkClient};
use crate::core::TaskFailure;
use crate::registry::{decode, encode, CodecError};
use crate::task::{Job, Task};
use crate::transport::{self, tls, FramedStream, TransportError};
use crate::wire::{
    ClusterStatus, Frame, JobOptions, JobProgress, JobState, SubmitHeader, DEFAULT_MAX_FRAME,
};

/// Errors a client sees.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// ZooKeeper unreachable or garbage in it.
    #[error(transparent)]
    Coord(#[from] CoordError),
    /// QUIC or TLS trouble.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// Certificates missing or bad.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// Task or result encoding.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// No master was published within the wait.
    #[error("no master is serving cluster {cluster} (waited {secs} s)")]
    NoMaster {
        /// The cluster.
        cluster: String,
        /// Seconds waited.
        secs: u64,
    },
    /// The master refused the request.
    #[error("{0}")]
    Refused(String),
    /// The master answered with something unexpected.
    #[error("unexpected reply: {0}")]
    Protocol(String),
}

/// How to reach a cluster.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// ZooKeeper connect string.
    pub zk: String,
    /// Cluster name.
    pub cluster: String,
    /// Directory with `ca.pem`, `client.pem`, `client.key`.
    pub certs: PathBuf,
    /// Requested ZooKeeper session timeout.
    pub session_timeout: Duration,
    /// How long to wait for a master before giving up on a request.
    pub master_wait: Duration,
}

impl ClientConfig {
    /// Defaults for a cluster at `zk` with certificates in `certs`.
    pub fn new(
        zk: impl Into<String>,
        cluster: impl Into<String>,
        certs: impl Into<PathBuf>,
    ) -> Self {
        ClientConfig {
            zk: zk.into(),
            cluster: cluster.into(),
            certs: certs.into(),
            session_timeout: Duration::from_secs(10),
            master_wait: Duration::from_secs(60),
        }
    }
}

struct Inner {
    zk: ZkClient,
    layout: Layout,
    cfg: ClientConfig,
    endpoint: quinn::Endpoint,
    conn: Mutex<Option<(u64, quinn::Connection)>>,
}

/// See the module doc. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

/// Options of one submission.
#[derive(Debug, Clone, Default)]
pub struct SubmitOptions {
    /// Job id; a random UUID if `None`.
    pub job_id: Option<String>,
    /// Tasks per shard; the job's default if `None`.
    pub shard_size: Option<u32>,
    /// Attempts per task (default 3).
    pub max_attempts: Option<u32>,
    /// A shard running longer than this gets a copy on another worker.
    pub shard_timeout: Option<Duration>,
}

/// A finished job's figures and failed tasks.
#[derive(Debug, Clone)]
pub struct JobReport {
    /// Final progress.
    pub progress: JobProgress,
    /// Tasks that failed every attempt (bounded).
    pub failures: Vec<TaskFailure>,
}

/// A submitted job.
pub struct JobHandle<J> {
    client: Client,
    id: String,
    existing: bool,
    _job: PhantomData<fn() -> J>,
}

const CHUNK_BYTES: usize = 4 << 20;

impl Client {
    /// Connects to ZooKeeper and prepares a QUIC endpoint.
    pub async fn connect(cfg: ClientConfig) -> Result<Self, ClientError> {
        let identity = tls::Identity::load(&cfg.certs, "client")?;
        let endpoint = transport::endpoint(
            "127.0.0.1:0"
                .parse()
                .map_err(|_| ClientError::Protocol("addr".into()))?,
            &identity,
            false,
            transport::LINK_TIMEOUT,
        )?;
        let zk = coord::connect(&cfg.zk, cfg.session_timeout).await?;
        let layout = Layout::new(&cfg.cluster);
        Ok(Client {
            inner: Arc::new(Inner {
                zk,
                layout,
                cfg,
                endpoint,
                conn: Mutex::new(None),
            }),
        })
    }

    async fn connection(
        &self,
        bad_epoch: Option<u64>,
    ) -> Result<(u64, quinn::Connection), ClientError> {
        let mut guard = self.inner.conn.lock().await;
        if let Some((epoch, conn)) = guard.as_ref() {
            if Some(*epoch) != bad_epoch && conn.close_reason().is_none() {
                return Ok((*epoch, conn.clone()));
            }
        }
        *guard = None;
        let wait = self.inner.cfg.master_wait;
        let zk = &self.inner.zk;
        let layout = &self.inner.layout;
        // Prefer a newer master; fall back to the same one after a short wait
        // (the failure may have been the link, not the master).
        let master = match coord::wait_for_master(zk, layout, bad_epoch, Duration::from_millis(500))
            .await?
        {
            Some(m) => Some(m),
            None => coord::wait_for_master(zk, layout, None, wait).await?,
        };
        let master = master.ok_or_else(|| ClientError::NoMaster {
            cluster: self.inner.cfg.cluster.clone(),
            secs: wait.as_secs(),
        })?;
        let conn = transport::dial(&self.inner.endpoint, &master.addr).await?;
        *guard = Some((master.epoch, conn.clone()));
        Ok((master.epoch, conn))
    }

    /// Sends a request, following failovers, and returns the master's reply.
    async fn request(&self, frames: &[Frame]) -> Result<Frame, ClientError> {
        let deadline = tokio::time::Instant::now() + self.inner.cfg.master_wait;
        let mut bad = None;
        loop {
            let err = match self.connection(bad).await {
                Err(ClientError::Transport(e)) => e.to_string(),
                Err(e) => return Err(e),
                Ok((epoch, conn)) => {
                    let reply = async {
                        let mut s = FramedStream::open(&conn, DEFAULT_MAX_FRAME * 16).await?;
                        s.request(frames).await
                    };
                    match reply.await {
                        Ok(Frame::NotMaster) => {
                            bad = Some(epoch);
                            format!("node of epoch {epoch} is not serving")
                        }
                        Ok(f) => return Ok(f),
                        Err(e) => {
                            bad = Some(epoch);
                            e.to_string()
                        }
                    }
                }
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(ClientError::NoMaster {
                    cluster: self.inner.cfg.cluster.clone(),
                    secs: self.inner.cfg.master_wait.as_secs(),
                });
            }
            tracing::debug!(error = %err, "request failed; retrying with the current master");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Submits encoded tasks of job `job_name`; returns `(job id, existed already)`.
    pub async fn submit_encoded(
        &self,
        job_name: &str,
        tasks: Vec<ByteBuf>,
        options: JobOptions,
        job_id: Option<String>,
    ) -> Result<(String, bool), ClientError> {
        let job_id = job_id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let header = SubmitHeader {
            job_id: job_id.clone(),
            job_name: job_name.to_string(),
            options,
            task_count: tasks.len() as u64,
        };
        let mut frames = vec![Frame::Submit(header)];
        let mut chunk = Vec::new();
        let mut size = 0;
        for t in tasks {
            size += t.len() + 8;
            chunk.push(t);
            if size > CHUNK_BYTES {
                frames.push(Frame::SubmitChunk {
                    tasks: std::mem::take(&mut chunk),
                });
                size = 0;
            }
        }
        if !chunk.is_empty() {
            frames.push(Frame::SubmitChunk { tasks: chunk });
        }
        match self.request(&frames).await? {
            Frame::Accepted { job_id, existing } => Ok((job_id, existing)),
            Frame::Error { message } => Err(ClientError::Refused(message)),
            other => Err(ClientError::Protocol(
                crate::actors::master::frame_name(&other).into(),
            )),
        }
    }

    /// Submits a job of tasks and returns its handle once the job is durable.
    pub async fn submit<J: Job>(
        &self,
        tasks: Vec<J::Task>,
        options: SubmitOptions,
    ) -> Result<JobHandle<J>, ClientError> {
        let encoded = tasks
            .iter()
            .map(|t| encode("task", t).map(ByteBuf::from))
            .collect::<Result<Vec<_>, _>>()?;
        let opts = JobOptions {
            shard_size: options
                .shard_size
                .unwrap_or_else(J::default_shard_size)
                .max(1),
            max_attempts: options.max_attempts.unwrap_or(3).max(1),
            shard_timeout_ms: options.shard_timeout.map(|t| t.as_millis() as u64),
        };
        let (id, existing) = self
            .submit_encoded(J::NAME, encoded, opts, options.job_id)
            .await?;
        Ok(JobHandle {
            client: self.clone(),
            id,
            existing,
            _job: PhantomData,
        })
    }

    /// A handle on an existing job.
    pub fn job<J: Job>(&self, id: impl Into<String>) -> JobHandle<J> {
        JobHandle {
            client: self.clone(),
            id: id.into(),
            existing: true,
            _job: PhantomData,
        }
    }

    /// The cluster's status.
    pub async fn status(&self) -> Result<ClusterStatus, ClientError> {
        match self.request(&[Frame::GetStatus]).await? {
            Frame::Status(s) => Ok(s),
            Frame::Error { message } => Err(ClientError::Refused(message)),
            other => Err(ClientError::Protocol(
                crate::actors::master::frame_name(&other).into(),
            )),
        }
    }

    /// A job's progress.
    pub async fn progress(&self, id: &str) -> Result<JobProgress, ClientError> {
        match self
            .request(&[Frame::GetJob {
                job_id: id.to_string(),
            }])
            .await?
        {
            Frame::Job(p) => Ok(p),
            Frame::Error { message } => Err(ClientError::Refused(message)),
            other => Err(ClientError::Protocol(
                crate::actors::master::frame_name(&other).into(),
            )),
        }
    }

    /// Waits until a job is done or cancelled, calling `on_progress` on each change.
    pub async fn wait(
        &self,
        id: &str,
        mut on_progress: impl FnMut(&JobProgress),
    ) -> Result<JobProgress, ClientError> {
        let mut last = None;
        loop {
            let p = self.progress(id).await?;
            if last.as_ref() != Some(&p) {
                on_progress(&p);
            }
            if p.state != JobState::Running {
                return Ok(p);
            }
            last = Some(p);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Fetches a finished job's encoded result; starts its retention clock.
    pub async fn fetch_encoded(&self, id: &str) -> Result<(Vec<u8>, JobReport), ClientError> {
        match self
            .request(&[Frame::FetchResult {
                job_id: id.to_string(),
            }])
            .await?
        {
            Frame::Outcome(o) => Ok((
                o.result.into_vec(),
                JobReport {
                    progress: o.progress,
                    failures: o.failures,
                },
            )),
            Frame::Error { message } => Err(ClientError::Refused(message)),
            other => Err(ClientError::Protocol(
                crate::actors::master::frame_name(&other).into(),
            )),
        }
    }

    /// Cancels a job.
    pub async fn cancel(&self, id: &str) -> Result<(), ClientError> {
        match self
            .request(&[Frame::Cancel {
                job_id: id.to_string(),
            }])
            .await?
        {
            Frame::Ok => Ok(()),
            Frame::Error { message } => Err(ClientError::Refused(message)),
            other => Err(ClientError::Protocol(
                crate::actors::master::frame_name(&other).into(),
            )),
        }
    }

    /// The ZooKeeper session (for tools and tests).
    pub fn zookeeper(&self) -> &ZkClient {
        &self.inner.zk
    }
}

impl<J: Job> JobHandle<J> {
    /// The job id.
    pub fn id(&self) -> &str {
        &self.id
    }
    /// Whether the submission found the job already there.
    pub fn existed(&self) -> bool {
        self.existing
    }
    /// Current progress.
    pub async fn progress(&self) -> Result<JobProgress, ClientError> {
        self.client.progress(&self.id).await
    }
    /// Waits for the end of the job and returns its result and report.
    pub async fn result(&self) -> Result<(J::Result, JobReport), ClientError> {
        self.client.wait(&self.id, |_| {}).await?;
        let (bytes, report) = self.client.fetch_encoded(&self.id).await?;
        let result = if bytes.is_empty() {
            J::Result::default()
        } else {
            decode("job result", &bytes)?
        };
        Ok((result, report))
    }
    /// Cancels the job.
    pub async fn cancel(&self) -> Result<(), ClientError> {
        self.client.cancel(&self.id).await
    }
}

/// Keeps `Task` in scope for rustdoc links.
#[allow(dead_code)]
fn _doc<T: Task>() {}
