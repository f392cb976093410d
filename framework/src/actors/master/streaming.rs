//! `StreamJob`: a job's committed outputs, each shard once, as they
//! commit. The stream's own task does the reading and the writing: it
//! asks the master only for the keys committed since its position (and
//! waits on the job's commit count when there are none), then reads each
//! record and output from ZooKeeper and the store. A slow client slows
//! only that task (QUIC's flow control holds its writes); the master never
//! waits for a stream. When the job leaves the master's memory (it ended),
//! the task reads what is left from ZooKeeper: a streamed job's commits
//! and outputs stay until the job is collected.

use std::collections::HashSet;
use std::time::Duration;

use actix::prelude::*;
use serde_bytes::ByteBuf;
use tokio::sync::watch;

use super::status::stored_progress;
use super::Master;
use crate::coord::{CoordError, JobStatus, LeaderStore};
use crate::core::ShardKey;
use crate::transport::{FramedStream, TransportError};
use crate::wire::{self, ErrorKind, Reply};

/// How long a stream waits for a job that is durable but not (yet) in
/// this master's memory (it is being loaded after a takeover).
const LOADING_WAIT: Duration = Duration::from_secs(30);

/// The keys a stream at position `from` has not been given yet.
#[derive(Message)]
#[rtype(result = "StreamStep")]
pub(crate) struct StreamFrom {
    pub job_id: String,
    pub from: usize,
    /// Who streams: checked against the job's owner each time the job is
    /// in memory (it may have become known since the stream began).
    pub peer: crate::transport::PeerId,
}

/// A committed shard, the commit record that holds it, and its inline
/// output if the master still holds it.
pub(crate) type LoggedCommit = (
    ShardKey,
    std::sync::Arc<str>,
    Option<std::sync::Arc<Vec<u8>>>,
);

pub(crate) enum StreamStep {
    /// The job runs here: the keys committed from `from` on, and its
    /// commit count (it changes when more commit, and closes when the job
    /// leaves memory).
    Running {
        /// Each key with its commit record, and its inline output when the
        /// master still holds it.
        keys: Vec<LoggedCommit>,
        /// It was submitted to be streamed.
        streamed: bool,
        more: watch::Receiver<usize>,
        store: LeaderStore,
    },
    /// Not in this master's memory: ended, being loaded, or unknown.
    Stored { store: LeaderStore, loading: bool },
    /// The job is not the streamer's to see: why.
    Refused(String),
}

impl Handler<StreamFrom> for Master {
    type Result = MessageResult<StreamFrom>;
    fn handle(&mut self, msg: StreamFrom, _ctx: &mut Context<Self>) -> Self::Result {
        let store = self.store.clone();
        if let Some(owner) = self.owner_of(&msg.job_id) {
            if let Some(why) = self.check_owner(owner.as_deref(), &msg.peer, &msg.job_id) {
                return MessageResult(StreamStep::Refused(why));
            }
        }
        MessageResult(match self.jobs.get(&msg.job_id) {
            Some(rt) => StreamStep::Running {
                streamed: rt.stored.record.options.stream,
                keys: rt
                    .commit_log
                    .get(msg.from..)
                    .unwrap_or_default()
                    .iter()
                    .enumerate()
                    .map(|(i, (key, at))| (*key, at.clone(), rt.recent_output(msg.from + i)))
                    .collect(),
                more: rt.commits.subscribe(),
                store,
            },
            None => StreamStep::Stored {
                store,
                loading: self.core.is_loading(&msg.job_id),
            },
        })
    }
}

/// Why a stream stopped early.
enum Stop {
    Transport(TransportError),
    /// ZooKeeper or the store failed a read: the client streams again
    /// (from this master or the next).
    Coord(CoordError),
}

impl From<TransportError> for Stop {
    fn from(e: TransportError) -> Self {
        Stop::Transport(e)
    }
}

impl From<CoordError> for Stop {
    fn from(e: CoordError) -> Self {
        Stop::Coord(e)
    }
}

impl From<crate::wire::WireError> for Stop {
    fn from(e: crate::wire::WireError) -> Self {
        Stop::Transport(e.into())
    }
}

/// Serves one `StreamJob` until the job's end is sent, the client goes, or
/// the master does (the client then streams again from the next one).
pub(crate) async fn stream_job(
    mut stream: FramedStream,
    master: Addr<Master>,
    job_id: String,
    seen: Vec<(u32, u32, u32)>,
    peer: crate::transport::PeerId,
) -> Result<(), TransportError> {
    match serve(&mut stream, master, &job_id, seen, &peer).await {
        Ok(()) => Ok(()),
        Err(Stop::Transport(e)) => Err(e),
        Err(Stop::Coord(e)) => {
            tracing::debug!(job = %job_id, error = %e, "a stream could not read; the client will ask again");
            Ok(stream.reply(&Reply::NotMaster).await?)
        }
    }
}

async fn serve(
    stream: &mut FramedStream,
    master: Addr<Master>,
    job_id: &str,
    seen: Vec<(u32, u32, u32)>,
    peer: &crate::transport::PeerId,
) -> Result<(), Stop> {
    let job_id = job_id.to_string();
    // What the client has, as it sent it (bounded by the runs that came,
    // not by the shards they claim), and what this stream sent (bounded by
    // the job's commits).
    let seen = wire::KeyRuns::new(&seen);
    let mut sent: HashSet<ShardKey> = HashSet::new();
    let mut fresh = |key: ShardKey| !seen.contains(key) && sent.insert(key);
    let mut position = 0usize;
    // The commit record last read: a record holds many consecutive keys.
    let mut cached = RecordCache::default();
    let gone = stream.peer_gone();
    tokio::pin!(gone);
    let waiting_since = tokio::time::Instant::now();
    loop {
        let Ok(step) = master
            .send(StreamFrom {
                job_id: job_id.clone(),
                from: position,
                peer: peer.clone(),
            })
            .await
        else {
            return Ok(stream.reply(&Reply::NotMaster).await?);
        };
        match step {
            StreamStep::Running {
                keys,
                streamed,
                mut more,
                store,
            } => {
                if !streamed {
                    return refuse_unstreamed(stream, &job_id).await;
                }
                if keys.is_empty() {
                    tokio::select! {
                        // A new commit, or the job left memory: ask again.
                        _ = more.changed() => {}
                        () = &mut gone => return Ok(()),
                    }
                    continue;
                }
                for (key, at, output) in keys {
                    position += 1;
                    if !fresh(key) {
                        continue;
                    }
                    match output {
                        Some(bytes) => {
                            stream
                                .send(&Reply::Partial {
                                    shard: key,
                                    output: ByteBuf::from(bytes.as_slice()),
                                })
                                .await?
                        }
                        None => {
                            let record = cached.get(&store, &at, key).await?;
                            send_partial(stream, &store, key, record).await?
                        }
                    }
                }
            }
            StreamStep::Refused(why) => {
                return Ok(stream.reply(&super::access::not_owner(why)).await?)
            }
            StreamStep::Stored { store, loading } => {
                let Some(job) = store.read_job(&job_id).await? else {
                    let message = format!("no job {job_id}");
                    return Ok(stream
                        .reply(&Reply::error(ErrorKind::NoSuchJob, message))
                        .await?);
                };
                let owner = job.record.owner.as_deref();
                if let Some(why) = super::access::deny(owner, peer, &job_id) {
                    return Ok(stream.reply(&super::access::not_owner(why)).await?);
                }
                if !job.record.options.stream {
                    return refuse_unstreamed(stream, &job_id).await;
                }
                let ended = matches!(job.record.status, JobStatus::Done | JobStatus::Cancelled);
                if !ended {
                    // Durable but not in memory: being loaded (or just
                    // submitted on this master). Ask again shortly.
                    if !loading && waiting_since.elapsed() > LOADING_WAIT {
                        return Ok(stream.reply(&Reply::NotMaster).await?);
                    }
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_millis(100)) => {}
                        () = &mut gone => return Ok(()),
                    }
                    continue;
                }
                // Ended: what is committed (each shard's chain, as a new
                // master would merge it), then the end.
                let commits = store.read_commits(&job).await?;
                let recovered = super::load::recover_stored(&job, &commits);
                let chain = recovered.outputs;
                for (key, record) in commits {
                    if chain.contains_key(&key) && fresh(key) {
                        send_partial(stream, &store, key, Some(record)).await?;
                    }
                }
                // A job done has every shard's commit (a streamed job never
                // ends without them): one that lacks some was being
                // collected as it was read, and the stream is not whole.
                let missing = recovered.plan.pending.len();
                if job.record.status == JobStatus::Done && missing > 0 {
                    let message = format!(
                        "job {job_id} was collected while it was streamed: the outputs of \
                         {missing} shards are gone, and this stream is incomplete"
                    );
                    return Ok(stream
                        .reply(&Reply::error(ErrorKind::JobState, message))
                        .await?);
                }
                let result = store.read_result(&job).await?;
                let progress = stored_progress(&job, result.as_ref());
                return Ok(stream.reply(&Reply::Job(progress)).await?);
            }
        }
    }
}

async fn refuse_unstreamed(stream: &mut FramedStream, job_id: &str) -> Result<(), Stop> {
    let message = format!(
        "job {job_id} was not submitted to be streamed: submit it with `stream: true` \
         (`submit --stream`), which keeps its outputs until it is collected"
    );
    Ok(stream
        .reply(&Reply::error(ErrorKind::Invalid, message))
        .await?)
}

/// The commit record a stream read last, whole.
#[derive(Default)]
struct RecordCache {
    at: Option<std::sync::Arc<str>>,
    entries: Vec<(ShardKey, crate::coord::ShardRecord)>,
}

impl RecordCache {
    /// Shard `key`'s record, from the commit record `at` (read once for
    /// all the keys it holds that come one after another).
    async fn get(
        &mut self,
        store: &LeaderStore,
        at: &std::sync::Arc<str>,
        key: ShardKey,
    ) -> Result<Option<crate::coord::ShardRecord>, Stop> {
        if self.at.as_ref() != Some(at) {
            self.entries = store.read_commit_record(at).await?;
            self.at = Some(at.clone());
        }
        Ok(self
            .entries
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, r)| r.clone()))
    }
}

/// Sends one committed shard's output. `None`: its commit is gone (the
/// job was collected meanwhile; the end says so).
async fn send_partial(
    stream: &mut FramedStream,
    store: &LeaderStore,
    key: ShardKey,
    record: Option<crate::coord::ShardRecord>,
) -> Result<(), Stop> {
    let Some(record) = record else {
        return Ok(());
    };
    let output = store.read_output(&record.output).await?;
    stream
        .send(&Reply::Partial {
            shard: key,
            output: ByteBuf::from(output),
        })
        .await?;
    Ok(())
}
