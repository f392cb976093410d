//! The node's streams: every stream a node accepts starts here, and goes
//! to the master it runs, if it runs one. The
//! first frame says what it is: a worker's link (`WorkerHello`, version
//! checked, then frames both ways for as long as the link lives), a
//! submission (`Submit` and its chunks, bounded by `--max-job-bytes`), a
//! watch (`WatchJob`: frames the master pushes until the job ends) or one
//! client request. A node that is not master answers `NotMaster`. A
//! worker's link is accepted only from the node certificate whose id is
//! the one the hello claims.

use std::sync::atomic::{AtomicU64, Ordering};

use actix::prelude::*;
use serde_bytes::ByteBuf;
use tokio::sync::{mpsc, oneshot, watch};

use super::master::{
    stream_job, Authorize, ClientRequest, GetEpoch, MarkFetched, Master, Report, Started, Submit,
    Unstarted, Watch, WorkerDrain, WorkerJoined, WorkerLeft,
};
use crate::core::job::task_bytes;
use crate::metrics as m;
use crate::store::Store;
use crate::transport::{self, Endpoint, FramedStream, Peer, TransportError};
use crate::wire::{
    self, ErrorKind, FromWorker, Hello, Opening, Reply, Request, ToWorker, WireError,
};

/// Tells a worker's links apart across reconnections.
static LINK_IDS: AtomicU64 = AtomicU64::new(1);

/// The largest first frame of a stream: every request's header (a
/// `StreamJob`'s runs included, at most [`crate::wire::MAX_SEEN_RUNS`])
/// fits in far less. Submissions' tasks come in later frames.
pub(crate) const FIRST_FRAME_LIMIT: usize = 256 << 10;

/// A bound on what decoding a request's frame makes of its bytes (a run
/// of three small integers takes 4 bytes encoded, 12 decoded): a first
/// frame holds this many times its length of its connection's budget.
pub(crate) const DECODED: usize = 4;

/// Per task of a submission's chunk, what its decoded copy holds beyond
/// its bytes (its buffer's header and the allocator's rounding).
const DECODED_PER_TASK: usize = 40;

/// What a connection's submissions may hold at once: room for any one
/// submission `--max-job-bytes` admits, its chunks as received and the
/// decoded copy of each task. The limit counts each task's bytes and
/// [`crate::core::job::TASK_OVERHEAD`]; the decoded copy holds
/// [`DECODED_PER_TASK`] per task beyond them, so a submission of many
/// small tasks holds up to some three and a half times what the limit
/// counts. (It was the limit and an eighth: a job of a million 10-byte
/// tasks, 26 MB of the default 32 MiB, was refused with "retry once some
/// of its requests are answered", which no retry could help.)
fn bulk_budget(max_job_bytes: usize) -> usize {
    let most_tasks = max_job_bytes / crate::core::job::TASK_OVERHEAD;
    max_job_bytes
        .saturating_add(max_job_bytes / 8)
        .saturating_add(most_tasks.saturating_mul(DECODED_PER_TASK))
}

/// What the first frames of a connection's open streams may hold of the
/// node's memory at once (see [`transport::Budget`]); a submission's tasks
/// have a budget of their own, `--max-job-bytes` and an eighth.
pub(crate) const HEADERS_BUDGET: usize = 4 << 20;

/// What a node's endpoint serves with.
pub(crate) struct Serving {
    /// Largest frame accepted.
    pub max_frame: usize,
    /// Largest submission accepted, in bytes of tasks.
    pub max_job_bytes: usize,
    /// Every connection's link timeout ([`transport::LinkWatch`]).
    pub link_timeout: std::time::Duration,
    /// Serial numbers of revoked certificates.
    pub revoked: transport::Revoked,
    /// The node's handshake counts.
    pub handshakes: transport::Handshakes,
    /// The node's store: a worker must share it.
    pub store: Store,
}

/// Serves the node's endpoint until it closes; streams go to the master
/// `route` names, when there is one.
pub(crate) async fn serve(
    endpoint: Endpoint,
    route: watch::Receiver<Option<Addr<Master>>>,
    serving: Serving,
) {
    let Serving {
        max_frame,
        max_job_bytes,
        link_timeout,
        revoked,
        handshakes,
        store,
    } = serving;
    let bulk = bulk_budget(max_job_bytes);
    let limits = (max_frame, HEADERS_BUDGET, bulk);
    transport::serve(
        endpoint,
        limits,
        link_timeout,
        revoked,
        handshakes.clone(),
        move |stream, peer: Peer| {
            let route = route.clone();
            let shared = Shared {
                store: store.clone(),
                handshakes: handshakes.clone(),
                max_job_bytes,
            };
            async move {
                let remote = peer.addr;
                if let Err(e) = handle_stream(stream, peer, route, shared).await {
                    tracing::debug!(%remote, error = %e, "stream ended with an error");
                }
            }
        },
    )
    .await
}

/// Answers a bad frame with what was wrong and stops reading.
async fn refuse(stream: &mut FramedStream, e: &WireError) {
    metrics::counter!(m::FRAME_ERRORS).increment(1);
    let _ = stream.reply(&Reply::error(e.kind(), e)).await;
    stream.refuse();
}

/// Why the certificate of `peer` may not register as worker `node_id`, if
/// it may not: only the node certificate of that id may.
pub(crate) fn worker_refusal(peer: &transport::PeerId, node_id: &str) -> Option<String> {
    if peer.is_node(node_id) {
        return None;
    }
    Some(match peer.role {
        transport::Role::Node => format!(
            "the certificate of node {} may not register as node {node_id}: a node joins \
             under the id its certificate names",
            peer.name
        ),
        _ => format!(
            "the certificate of {peer} may not register as a worker: only node certificates \
             may (`certs issue --node ID`)"
        ),
    })
}

/// What every stream's handler is given by the node.
struct Shared {
    /// The node's store: a worker must share it.
    store: Store,
    /// Its handshake counts: a worker refused for its store counts as a
    /// peer refusing this master (see [`crate::core::standing`]).
    handshakes: transport::Handshakes,
    max_job_bytes: usize,
}

/// Why worker `node_id`, whose node was given store `theirs` and left
/// `mark` in it, may not link to a master of `store`: the master could
/// not read its outputs.
async fn store_refusal(store: &Store, node_id: &str, theirs: &str, mark: &str) -> Option<String> {
    let what_to_give = "give every node the same --store: s3://bucket/prefix for nodes on \
                        several hosts; on one host, leave --store out (the default is one \
                        directory per cluster and user) or give one file:///path";
    match store.has_mark(node_id, mark).await {
        Ok(true) => None,
        Ok(false) => {
            Some(format!(
            "node {node_id}'s store ({}) is not this master's ({}): the mark it wrote there at \
             start is not in this master's store, so the master could not read its outputs; \
             {what_to_give}",
            if theirs.is_empty() { "not named" } else { theirs },
            store.url(),
        ))
        }
        // A store that does not answer now fails the worker's shards
        // anyway; a link refused for it would cost the cluster its
        // capacity when the store comes back.
        Err(e) => {
            tracing::warn!(node = node_id, error = %e, "cannot check that a worker shares this master's store; linking it");
            None
        }
    }
}

async fn handle_stream(
    mut stream: FramedStream,
    peer: Peer,
    route: watch::Receiver<Option<Addr<Master>>>,
    shared: Shared,
) -> Result<(), TransportError> {
    let max_job_bytes = shared.max_job_bytes;
    // Held until the stream ends: what its request keeps in memory.
    let (first, held) = match stream
        .recv_within::<Opening>(FIRST_FRAME_LIMIT, &peer.budget, DECODED)
        .await
    {
        Ok(f) => f,
        Err(TransportError::Wire(WireError::Closed)) => return Ok(()),
        Err(TransportError::Wire(e @ WireError::OverBudget { .. })) => {
            tracing::debug!(peer = %peer.id, error = %e, "refusing a request over its connection's budget");
            refuse(&mut stream, &e).await;
            return Err(e.into());
        }
        Err(TransportError::Wire(
            e @ (WireError::TooLarge { .. } | WireError::Malformed(_) | WireError::Unknown { .. }),
        )) => {
            tracing::warn!(error = %e, "refusing a bad frame");
            refuse(&mut stream, &e).await;
            return Err(e.into());
        }
        Err(e) => return Err(e),
    };
    let master = route.borrow().clone();
    let Some(master) = master else {
        return Ok(stream.reply(&Reply::NotMaster).await?);
    };
    let first = match first {
        Opening::Worker(hello) => {
            drop(held);
            return join(stream, master, hello, &peer, &shared).await;
        }
        Opening::Client(request) => request,
    };
    if m::CLIENT_REQUEST_KINDS.contains(&first.name()) {
        metrics::counter!(m::CLIENT_REQUESTS, "request" => first.name()).increment(1);
    }
    // A request that names a job: a valid id (checked before anything is
    // read for it), and only its owner, an admin or a node.
    if let Some(job_id) = first.addressed_job() {
        if let Err(e) = crate::core::job::check_job_id(job_id) {
            return Ok(stream.reply(&Reply::error(ErrorKind::Invalid, e)).await?);
        }
        let asked = master.send(Authorize {
            peer: peer.id.clone(),
            job_id: job_id.to_string(),
        });
        match asked.await {
            Ok(None) => {}
            Ok(Some(refusal)) => return Ok(stream.reply(&refusal).await?),
            Err(_) => return Ok(stream.reply(&Reply::NotMaster).await?),
        }
    }
    let answer = match first {
        Request::Submit(header) => {
            // Each task counts at least its overhead: a count past the
            // limit is refused before a chunk is read.
            let least = header
                .task_count
                .saturating_mul(crate::core::job::TASK_OVERHEAD as u64);
            if least > max_job_bytes as u64 {
                let message = format!(
                    "a submission of {} tasks exceeds the limit of {max_job_bytes} bytes of tasks \
                     (--max-job-bytes; each task counts its bytes and {} more)",
                    header.task_count,
                    crate::core::job::TASK_OVERHEAD
                );
                return Ok(stream
                    .reply(&Reply::error(ErrorKind::Invalid, message))
                    .await?);
            }
            let mut tasks: Vec<ByteBuf> = Vec::new();
            let mut bytes = 0usize;
            let mut held = held;
            while (tasks.len() as u64) < header.task_count {
                // A chunk may be as big as the stream allows.
                match stream.recv_within(usize::MAX, &peer.bulk, 1).await {
                    Ok((Request::SubmitChunk { tasks: chunk }, chunk_held)) => {
                        held.merge(chunk_held);
                        // Its decoded copy: a buffer per task.
                        match peer.bulk.take(chunk.len().saturating_mul(DECODED_PER_TASK)) {
                            Ok(h) => held.merge(h),
                            Err(e) => {
                                refuse(&mut stream, &e).await;
                                return Err(e.into());
                            }
                        }
                        bytes = bytes.saturating_add(task_bytes(&chunk));
                        if bytes > max_job_bytes {
                            return Ok(stream.reply(&over_job_bytes(max_job_bytes)).await?);
                        }
                        tasks.extend(chunk);
                    }
                    Ok((other, _)) => {
                        let message = format!("expected SubmitChunk, got {}", other.name());
                        return Ok(stream
                            .reply(&Reply::error(ErrorKind::Invalid, message))
                            .await?);
                    }
                    // A chunk that would not fit even alone is over the
                    // submission's limit, and said so.
                    Err(TransportError::Wire(WireError::OverBudget { wanted, .. }))
                        if bytes.saturating_add(wanted) > max_job_bytes =>
                    {
                        return Ok(stream.reply(&over_job_bytes(max_job_bytes)).await?);
                    }
                    Err(TransportError::Wire(e)) => {
                        refuse(&mut stream, &e).await;
                        return Err(e.into());
                    }
                    Err(e) => return Err(e),
                }
            }
            let submitted = Submitted {
                header,
                tasks,
                bytes,
                held,
            };
            return submission(stream, master, submitted, peer.id).await;
        }
        Request::WatchJob {
            job_id,
            fetch,
            unmarked,
        } => {
            let how = WatchHow { fetch, unmarked };
            return watch(stream, master, job_id, how, peer.id).await;
        }
        Request::StreamJob { job_id, seen } => {
            return stream_job(stream, master, job_id, seen, peer.id).await
        }
        other @ (Request::GetJob { .. }
        | Request::GetStatus
        | Request::FetchResult { .. }
        | Request::Cancel { .. }
        | Request::PlanJob { .. }
        | Request::ListJobs(_)
        | Request::SetFairness { .. }
        | Request::ListFairness
        | Request::SetLimit { .. }
        | Request::ListLimits) => {
            master
                .send(ClientRequest {
                    frame: other,
                    peer: peer.id,
                })
                .await
        }
        other => {
            let message = format!("unexpected first frame {}", other.name());
            return Ok(stream
                .reply(&Reply::error(ErrorKind::Unsupported, message))
                .await?);
        }
    };
    Ok(stream.reply(&answer.unwrap_or(Reply::NotMaster)).await?)
}

/// A worker's hello: refused (another protocol, another node's
/// certificate, another store), or its link, for as long as it lives (it
/// holds nothing of the connection's budget).
async fn join(
    mut stream: FramedStream,
    master: Addr<Master>,
    hello: Hello,
    peer: &Peer,
    shared: &Shared,
) -> Result<(), TransportError> {
    let Hello {
        version,
        node_id,
        slots,
        jobs,
        epoch: _,
        store,
        store_mark,
        newest,
        build,
        shapes,
    } = hello;
    let version = match wire::negotiate(version, newest.unwrap_or(version)) {
        Ok(version) => version,
        Err(why) => {
            let build = if build.is_empty() {
                "an older build"
            } else {
                &build
            };
            let why = why.by("this master");
            let message = format!("worker {node_id} ({build}) cannot join: {why}");
            metrics::counter!(m::PEER_REFUSALS, "reason" => "version").increment(1);
            tracing::warn!(peer = %peer.id, addr = %peer.addr, "refused a worker: {message}");
            return Ok(stream
                .reply(&ToWorker::error(ErrorKind::Unsupported, message))
                .await?);
        }
    };
    if let Some(message) = worker_refusal(&peer.id, &node_id) {
        metrics::counter!(m::PEER_REFUSALS, "reason" => "role").increment(1);
        tracing::warn!(peer = %peer.id, addr = %peer.addr, claimed = %node_id, "refused a worker: {message}");
        return Ok(stream
            .reply(&ToWorker::error(ErrorKind::Invalid, message))
            .await?);
    }
    if let Some(message) = store_refusal(&shared.store, &node_id, &store, &store_mark).await {
        metrics::counter!(m::PEER_REFUSALS, "reason" => "store").increment(1);
        shared.handshakes.refused_for_store();
        tracing::error!(peer = %peer.id, addr = %peer.addr, "refused a worker: {message}");
        return Ok(stream
            .reply(&ToWorker::error(ErrorKind::Invalid, message))
            .await?);
    }
    let worker = Joining {
        node_id,
        slots,
        jobs,
        version,
        shapes,
    };
    worker_link(stream, master, worker).await
}

/// The refusal of a submission for its size.
fn over_job_bytes(max_job_bytes: usize) -> Reply {
    Reply::error(
        ErrorKind::Invalid,
        format!(
            "submission exceeds the limit of {max_job_bytes} bytes of tasks (--max-job-bytes; \
             each task counts its bytes and {} more)",
            crate::core::job::TASK_OVERHEAD
        ),
    )
}

/// What a watch asks for (see [`Request::WatchJob`]).
#[derive(Clone, Copy)]
struct WatchHow {
    fetch: bool,
    unmarked: bool,
}

/// A watch: what the master pushes for the job is written until a frame
/// ends the watch, the master goes (the client then watches again,
/// wherever the master is), or the client does.
async fn watch(
    mut stream: FramedStream,
    master: Addr<Master>,
    job_id: String,
    how: WatchHow,
    peer: transport::PeerId,
) -> Result<(), TransportError> {
    let (tx, rx) = transport::Outbox::new(transport::WATCH_QUEUE, "watch");
    let w = Watch {
        job_id: job_id.clone(),
        fetch: how.fetch,
        unmarked: how.unmarked,
        tx,
        peer: peer.clone(),
    };
    if master.send(w).await.is_err() {
        return Ok(stream.reply(&Reply::NotMaster).await?);
    }
    let ack = how.unmarked.then_some(Ack {
        master,
        job_id,
        peer,
    });
    watching(stream, rx, None, ack).await
}

/// A submission as read from its stream.
struct Submitted {
    header: crate::wire::SubmitHeader,
    tasks: Vec<ByteBuf>,
    /// Their bytes, as the ledger counts them.
    bytes: usize,
    /// What reading them took of the connection's budget.
    held: transport::Held,
}

/// A submission with its tasks read: the master's answer, and the watch
/// the client may send behind its tasks (`Client::run`: one stream for a
/// job and its end). That watch is read while the master handles the
/// submission and handed over to it at once, so that a job that ends as
/// it is created is marked fetched in that write and its end comes on
/// this stream; the answer goes first. Any other client ends the stream
/// once answered.
async fn submission(
    stream: FramedStream,
    master: Addr<Master>,
    submitted: Submitted,
    peer: transport::PeerId,
) -> Result<(), TransportError> {
    let Submitted {
        header,
        tasks,
        bytes,
        held,
    } = submitted;
    let job_id = header.job_id.clone();
    let (handover, handed) = oneshot::channel::<Watch>();
    let (mut send, mut recv) = stream.split();
    // A watch of the job that the master did not take: sent to it once
    // the submission is answered.
    let mut kept: Option<Watch> = None;
    let mut frames: Option<mpsc::Receiver<Reply>> = None;
    let next = {
        let next = recv.read_frame::<Request>();
        tokio::pin!(next);
        let answer = master.send(Submit {
            header,
            tasks,
            bytes,
            peer: peer.clone(),
            watch: Some(handed),
        });
        tokio::pin!(answer);
        let mut handover = Some(handover);
        let mut read: Option<Result<Request, WireError>> = None;
        let answer = loop {
            tokio::select! {
                a = &mut answer => break a,
                f = &mut next, if read.is_none() => {
                    if let Ok(Request::WatchJob { job_id: watched, fetch, unmarked }) = &f {
                        if *watched == job_id {
                            let (tx, rx) = transport::Outbox::new(transport::WATCH_QUEUE, "watch");
                            let w = Watch {
                                job_id: watched.clone(),
                                fetch: *fetch,
                                unmarked: *unmarked,
                                tx,
                                peer: peer.clone(),
                            };
                            if let Some(Err(w)) = handover.take().map(|h| h.send(w)) {
                                kept = Some(w);
                            }
                            frames = Some(rx);
                        }
                    }
                    read = Some(f);
                }
            }
        };
        // Answered: its tasks are the master's now (or dropped).
        drop(held);
        let Ok(accepted @ Reply::Accepted { .. }) = answer else {
            send.write_frame(&answer.unwrap_or(Reply::NotMaster))
                .await?;
            send.finish();
            return Ok(());
        };
        match read {
            // The watch came: the answer goes with what the master pushed
            // for it (a job that ended as it was created: both at once).
            Some(f) => (f, Some(accepted)),
            None => {
                send.write_frame(&accepted).await?;
                (next.await, None)
            }
        }
    };
    let (next, unsent) = next;
    let mut stream = FramedStream::join(send, recv);
    match next {
        Ok(Request::WatchJob {
            job_id: watched,
            fetch,
            unmarked,
        }) if watched == job_id => {
            let ack = unmarked.then(|| Ack {
                master: master.clone(),
                job_id: job_id.clone(),
                peer: peer.clone(),
            });
            match (frames, kept) {
                // Handed over: the master registered it with its answer.
                (Some(rx), None) => watching(stream, rx, unsent, ack).await,
                (Some(rx), Some(w)) => {
                    if master.send(w).await.is_err() {
                        if let Some(accepted) = unsent {
                            stream.send(&accepted).await?;
                        }
                        return Ok(stream.reply(&Reply::NotMaster).await?);
                    }
                    watching(stream, rx, unsent, ack).await
                }
                (None, _) => {
                    let how = WatchHow { fetch, unmarked };
                    watch(stream, master, job_id, how, peer).await
                }
            }
        }
        Ok(other) => {
            if let Some(accepted) = unsent {
                stream.send(&accepted).await?;
            }
            let message = format!(
                "only a WatchJob of job {job_id} may follow its submission, not {}",
                other.name()
            );
            Ok(stream
                .reply(&Reply::error(ErrorKind::Invalid, message))
                .await?)
        }
        Err(_) => {
            if let Some(accepted) = unsent {
                stream.send(&accepted).await?;
            }
            stream.finish();
            Ok(())
        }
    }
}

/// Where the client of an unmarked watch says it read the result it was
/// pushed ([`Request::Fetched`]).
struct Ack {
    master: Addr<Master>,
    job_id: String,
    peer: transport::PeerId,
}

/// The most a client of an unmarked watch has to say once its result is
/// pushed: one `Fetched`.
const ACK_FRAME_LIMIT: usize = 4 << 10;

/// Writes what the master pushes for a watched job (through `rx`) until
/// a frame ends the watch, the master goes or the client does. What comes
/// while a write is under way waits, a job's progress only as its latest
/// frame: a client that reads slowly, or not yet (a handle whose result
/// is not asked for), costs a frame or two here, never a queue. With
/// `ack` (an unmarked watch), a result pushed is marked fetched once the
/// client says it read it.
async fn watching(
    mut stream: FramedStream,
    mut rx: mpsc::Receiver<Reply>,
    first: Option<Reply>,
    ack: Option<Ack>,
) -> Result<(), TransportError> {
    let gone = stream.peer_gone();
    tokio::pin!(gone);
    let mut buf = Vec::new();
    let mut queued: std::collections::VecDeque<Reply> = first.into_iter().collect();
    let mut master_gone = false;
    loop {
        if queued.is_empty() {
            if master_gone {
                return Ok(());
            }
            let frame = tokio::select! {
                f = rx.recv() => f,
                () = &mut gone => return Ok(()),
            };
            match frame {
                Some(f) => queued.push_back(f),
                // The master stopped: the client finds the next one.
                None => return Ok(()),
            }
        }
        // What is queued behind it goes in the same write: a job's end
        // right behind its acceptance or its last progress.
        while let Ok(f) = rx.try_recv() {
            queue_coalescing(&mut queued, f);
        }
        buf.clear();
        let (mut frames, mut ended, mut outcome) = (0u64, false, false);
        while let Some(f) = queued.pop_front() {
            // The submission's answer, first, ends nothing.
            ended = f.ends_watch() && !matches!(f, Reply::Accepted { .. });
            outcome = matches!(f, Reply::Outcome(_));
            crate::wire::encode_into(&mut buf, &f)?;
            frames += 1;
            if ended {
                break;
            }
        }
        queued.clear();
        let (counted, bytes) = m::frames(true);
        counted.increment(frames);
        bytes.increment(buf.len() as u64);
        {
            let write = stream.write_encoded(&buf);
            tokio::pin!(write);
            loop {
                tokio::select! {
                    r = &mut write => {
                        r?;
                        break;
                    }
                    f = rx.recv(), if !ended && !master_gone => match f {
                        Some(f) => queue_coalescing(&mut queued, f),
                        None => master_gone = true,
                    },
                    () = &mut gone => return Ok(()),
                }
            }
        }
        if ended {
            stream.finish();
            if let (true, Some(ack)) = (outcome, ack) {
                // Read once the client's `result()` reads it: the handle
                // may hold it for a while, or drop it unread.
                if let Ok(Request::Fetched { job_id }) = stream.recv_limited(ACK_FRAME_LIMIT).await
                {
                    if job_id == ack.job_id {
                        ack.master.do_send(MarkFetched {
                            job_id,
                            peer: ack.peer,
                        });
                    }
                }
            }
            return Ok(());
        }
    }
}

/// Queues `f` behind what waits to be written, a job's progress in place
/// of a progress frame still waiting (the newer says all it did).
fn queue_coalescing(queued: &mut std::collections::VecDeque<Reply>, f: Reply) {
    let progress = |f: &Reply| matches!(f, Reply::Job(p) if !p.state.is_final());
    if progress(&f) {
        if let Some(last) = queued.back_mut().filter(|l| progress(l)) {
            *last = f;
            return;
        }
    }
    queued.push_back(f);
}

/// A worker's link: frames it sends go to the master as messages; frames
/// the master queues for it are written in order.
/// A worker whose hello was accepted.
struct Joining {
    node_id: String,
    slots: u32,
    jobs: Vec<String>,
    /// The link's protocol version.
    version: u32,
    /// Its jobs' types, by name.
    shapes: std::collections::BTreeMap<String, u64>,
}

async fn worker_link(
    mut stream: FramedStream,
    master: Addr<Master>,
    worker: Joining,
) -> Result<(), TransportError> {
    let Joining {
        node_id,
        slots,
        jobs,
        version,
        shapes,
    } = worker;
    let link_id = LINK_IDS.fetch_add(1, Ordering::Relaxed);
    let (tx, mut rx) = transport::Outbox::new(transport::LINK_QUEUE, "link");
    let Ok(epoch) = master.send(GetEpoch).await else {
        return Ok(stream.reply(&ToWorker::NotMaster).await?);
    };
    let welcome = ToWorker::Welcome {
        epoch,
        version: Some(version),
    };
    stream.send(&welcome).await?;
    master.do_send(WorkerJoined {
        node_id: node_id.clone(),
        slots,
        jobs,
        tx,
        link_id,
        version,
        shapes,
    });
    let (mut send, mut recv) = stream.split();
    let writer = async move { transport::write_queued(&mut send, &mut rx).await };
    let reader = async {
        loop {
            match recv.read_frame::<FromWorker>().await? {
                FromWorker::Report(report) => master.do_send(Report {
                    node_id: node_id.clone(),
                    report,
                }),
                FromWorker::Draining => master.do_send(WorkerDrain {
                    node_id: node_id.clone(),
                    drained: false,
                }),
                FromWorker::Drained => master.do_send(WorkerDrain {
                    node_id: node_id.clone(),
                    drained: true,
                }),
                FromWorker::Unstarted(run) => master.do_send(Unstarted {
                    node_id: node_id.clone(),
                    run,
                }),
                FromWorker::Started {
                    epoch,
                    job_id,
                    incarnation,
                    shard,
                    attempt,
                } => master.do_send(Started {
                    node_id: node_id.clone(),
                    epoch,
                    job_id,
                    incarnation,
                    shard,
                    attempt,
                }),
                other => {
                    tracing::warn!(worker = %node_id, frame = other.name(), "unexpected frame from worker")
                }
            }
        }
        #[allow(unreachable_code)]
        Ok::<_, WireError>(())
    };
    let res = tokio::select! { r = writer => r, r = reader => r };
    if let Err(WireError::TooLarge { .. } | WireError::Malformed(_)) = &res {
        metrics::counter!(m::FRAME_ERRORS).increment(1);
    }
    master.do_send(WorkerLeft { node_id, link_id });
    Ok(res?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{JobProgress, JobState};

    fn progress(done: u64, state: JobState) -> Reply {
        let mut p = JobProgress {
            job_id: "j".into(),
            job_name: "probe".into(),
            state,
            counters: Default::default(),
            not_before_ms: None,
        };
        p.counters.tasks_done = done;
        Reply::Job(p)
    }

    fn done_of(f: &Reply) -> u64 {
        match f {
            Reply::Job(p) => p.counters.tasks_done,
            _ => u64::MAX,
        }
    }

    #[test]
    fn any_submission_the_job_limit_admits_fits_its_connections_budget_alone() {
        for max_job_bytes in [200_000usize, 32 << 20] {
            // The worst case: the most tasks the limit admits, each empty,
            // in one chunk as received and then decoded.
            let n = max_job_bytes / crate::core::job::TASK_OVERHEAD;
            let chunk = Request::SubmitChunk {
                tasks: vec![ByteBuf::new(); n],
            };
            let mut received = Vec::new();
            crate::wire::encode_into(&mut received, &chunk).expect("encodes");
            let held = received.len() + n * DECODED_PER_TASK;
            assert!(
                held <= bulk_budget(max_job_bytes),
                "{held} bytes held, {} budgeted, for a limit of {max_job_bytes}",
                bulk_budget(max_job_bytes)
            );
        }
    }

    #[test]
    fn a_watch_that_is_not_read_keeps_its_latest_progress_and_its_end_only() {
        let mut q = std::collections::VecDeque::new();
        queue_coalescing(
            &mut q,
            Reply::Accepted {
                job_id: "j".into(),
                existing: false,
            },
        );
        for done in 0..10_000 {
            queue_coalescing(&mut q, progress(done, JobState::Running));
        }
        assert_eq!(q.len(), 2, "the answer and one progress");
        assert_eq!(done_of(&q[1]), 9_999, "the latest");
        queue_coalescing(&mut q, progress(10_000, JobState::Done));
        queue_coalescing(&mut q, progress(10_001, JobState::Running));
        let dones: Vec<u64> = q.iter().skip(1).map(done_of).collect();
        assert_eq!(
            dones,
            vec![9_999, 10_000, 10_001],
            "an end is never replaced"
        );
    }
}
