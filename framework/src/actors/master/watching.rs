//! `WatchJob`: progress pushed to clients as it happens, so that a client
//! waiting for a job hears of its end as soon as it is durable instead of
//! polling. Per job, the master keeps the streams that watch it. A commit
//! marks the job for a progress frame (at most one per [`WATCH_PERIOD`]);
//! the job's end (its `Done` durable, or its cancel) sends the last frame,
//! with the fetched result to watchers that asked for it. A watcher is
//! registered before the job's state is read, so an end that happens
//! meanwhile is not missed (it may be sent twice; the first ends the
//! stream). When the master stops, every watch stream ends and the clients
//! watch again at the next master.
//!
//! A watch is checked against its job's owner when it attaches, if the
//! master knows the job; one of a job not known yet (being submitted, or
//! not there) is sent nothing until the job's owner is known (the job
//! becomes known here, or its record is read), and refused then if it
//! is not its owner's, an admin's or a node's.

use std::collections::{HashMap, HashSet};

use actix::prelude::*;
use serde_bytes::ByteBuf;

use super::access::visible;
use super::fetch::fetch;
use super::status::read_progress;
use super::{error, failed, Master};
use crate::coord::{OutputRef, ResultRecord};
use crate::transport::PeerId;
use crate::wire::{ErrorKind, JobOutcome, JobProgress, Reply, WATCH_PERIOD};

/// A client watches a job.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Watch {
    pub job_id: String,
    /// End with the job's result.
    pub fetch: bool,
    /// Without `fetch`: end with the result if it is at hand, unmarked
    /// (see [`crate::wire::Request::WatchJob`]).
    pub unmarked: bool,
    /// Where its frames go (the client's stream): a watch whose queue is
    /// full is dropped, and its client watches again.
    pub tx: crate::transport::Outbox<Reply>,
    /// Who watches.
    pub peer: PeerId,
}

/// A client read a result pushed unmarked: its fetch, to be marked.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct MarkFetched {
    pub job_id: String,
    /// Who read it (the watch's peer, checked when it was registered).
    pub peer: PeerId,
}

struct Watcher {
    tx: crate::transport::Outbox<Reply>,
    fetch: bool,
    unmarked: bool,
    peer: PeerId,
    /// Its job's owner was known, and it may watch: it is sent frames.
    checked: bool,
}

/// The watch streams of the master's jobs.
#[derive(Default)]
pub(super) struct Watchers {
    by_job: HashMap<String, Vec<Watcher>>,
    /// Jobs whose progress changed since their last frame.
    dirty: HashSet<String>,
    flush_scheduled: bool,
    /// Jobs whose pushed result was read, to be marked fetched.
    marks: Vec<String>,
    marks_scheduled: bool,
}

/// How long a read result's fetch mark waits for others to be written
/// with: its retention starts that much later.
pub(super) const MARK_DELAY: std::time::Duration = std::time::Duration::from_millis(100);

/// Most fetch marks waiting at once; beyond, a read result is left to be
/// marked by its next fetch, as a result never read is.
const MAX_MARKS: usize = 100_000;

impl Watchers {
    /// Whether a client still waits on a watch for the job's result. A
    /// stream its client gave up on does not count: marking the result
    /// fetched for it would start its retention with nobody holding it
    /// (at retention 0, collect it before the client's next watch).
    fn want_result(&self, job_id: &str) -> bool {
        self.by_job
            .get(job_id)
            .is_some_and(|ws| ws.iter().any(|w| w.fetch && w.checked && !w.tx.is_closed()))
    }

    /// The job's owner is known: its watchers that may not watch it are
    /// refused and dropped (the refusals returned, for the count and the
    /// log); the others are sent frames from now on.
    fn screen(&mut self, job_id: &str, owner: Option<&str>) -> Vec<PeerId> {
        let Some(ws) = self.by_job.get_mut(job_id) else {
            return Vec::new();
        };
        let mut refused = Vec::new();
        ws.retain_mut(|w| {
            if w.checked {
                return true;
            }
            if visible(owner, &w.peer) {
                w.checked = true;
                return true;
            }
            let why = super::access::refusal(owner, &w.peer, job_id).unwrap_or_default();
            let _ = w.tx.push(error(ErrorKind::NotOwner, why));
            refused.push(w.peer.clone());
            false
        });
        if ws.is_empty() {
            self.by_job.remove(job_id);
        }
        refused
    }
}

impl Handler<Watch> for Master {
    type Result = ();
    fn handle(&mut self, msg: Watch, ctx: &mut Context<Self>) {
        self.watch(ctx, msg);
    }
}

impl Handler<MarkFetched> for Master {
    type Result = ();
    fn handle(&mut self, msg: MarkFetched, ctx: &mut Context<Self>) {
        self.mark_fetched(ctx, msg);
    }
}

impl Master {
    /// Registers a watch (from its own stream, or sent behind a
    /// submission).
    pub(super) fn watch(&mut self, ctx: &mut Context<Self>, msg: Watch) {
        self.watch_from(ctx, msg, true);
    }

    /// Registers a watch; its first frame is the job's progress now if
    /// `progress` (not for a job about to end, whose end is its next).
    pub(super) fn watch_from(&mut self, ctx: &mut Context<Self>, msg: Watch, progress: bool) {
        let Watch {
            job_id,
            fetch,
            unmarked,
            tx,
            peer,
        } = msg;
        let owner = self.owner_of(&job_id);
        if let Some(owner) = &owner {
            if let Some(why) = self.check_owner(owner.as_deref(), &peer, &job_id) {
                let _ = tx.push(error(ErrorKind::NotOwner, why));
                return;
            }
        }
        let checked = owner.is_some() || peer.acts_for_all();
        if let Some(p) = self.progress(&job_id).filter(|_| progress && checked) {
            if !tx.push(Reply::Job(p)) {
                return;
            }
        }
        let known = self.jobs.contains_key(&job_id)
            || self.core.is_loading(&job_id)
            || self.core.is_submitting(&job_id);
        let watchers = self.watchers.by_job.entry(job_id.clone()).or_default();
        // Streams given up by their clients (a quiet watch is reopened
        // every 10 s) go now, not at the job's next frame.
        watchers.retain(|w| !w.tx.is_closed());
        watchers.push(Watcher {
            tx,
            fetch,
            unmarked: unmarked && !fetch,
            peer,
            checked,
        });
        if !known {
            // Not running here: ended, unknown, or accepted and about to be
            // scheduled. ZooKeeper says which.
            self.watch_stored(ctx, job_id);
        }
    }

    /// Tells a job's watchers what ZooKeeper holds of it (its end, if it
    /// ended; an error if there is no such job).
    pub(super) fn watch_stored(&mut self, ctx: &mut Context<Self>, job_id: String) {
        let store = self.store.clone();
        let id = job_id.clone();
        let read = async move { read_progress(&store, &id).await };
        ctx.spawn(read.into_actor(self).map(move |res, act, ctx| match res {
            Ok((frame, Some(owner))) => {
                act.screen(&job_id, owner.as_deref());
                match frame {
                    Reply::Job(p) if p.state.is_final() => {
                        act.watch_ended(ctx, &job_id, p, None, false)
                    }
                    frame => act.push(&job_id, &frame),
                }
            }
            Ok((other, None)) => act.end_watch(&job_id, &other),
            Err(e) => act.end_watch(&job_id, &failed(&e)),
        }));
    }

    /// The job's owner is known (the job became known here, or its record
    /// was read): its watchers are checked against it.
    pub(super) fn screen(&mut self, job_id: &str, owner: Option<&str>) {
        for peer in self.watchers.screen(job_id, owner) {
            self.check_owner(owner, &peer, job_id);
        }
    }

    /// A job's progress changed: its watchers hear of it within [`WATCH_PERIOD`].
    pub(super) fn progressed(&mut self, ctx: &mut Context<Self>, job_id: &str) {
        if !self.watchers.by_job.contains_key(job_id) {
            return;
        }
        self.watchers.dirty.insert(job_id.to_string());
        if !self.watchers.flush_scheduled {
            self.watchers.flush_scheduled = true;
            ctx.run_later(WATCH_PERIOD, |act, _| {
                act.watchers.flush_scheduled = false;
                for id in std::mem::take(&mut act.watchers.dirty) {
                    if let Some(p) = act.progress(&id) {
                        act.push(&id, &Reply::Job(p));
                    }
                }
            });
        }
    }

    /// Whether a watcher of the job waits for its result (the finish then
    /// marks it fetched, and hands it over from memory).
    pub(super) fn want_result(&self, job_id: &str) -> bool {
        self.watchers.want_result(job_id)
    }

    /// A job ended (its `Done` or `Cancelled` is durable): its watchers
    /// get the final progress, or the result if they asked. `result` is
    /// the record just written, if this master wrote it, and `marked`
    /// whether that write marked it fetched. Watchers that fetch get it
    /// from there when it is marked and holds the output inline or comes
    /// with the bytes of the object it names, else by a fetch (which
    /// marks it); unmarked watchers get it from there whenever it can,
    /// else the final progress.
    pub(super) fn watch_ended(
        &mut self,
        ctx: &mut Context<Self>,
        job_id: &str,
        p: JobProgress,
        result: Option<(ResultRecord, Option<bytes::Bytes>)>,
        marked: bool,
    ) {
        if let Some(owner) = self.owner_of(job_id) {
            self.screen(job_id, owner.as_deref());
        }
        let Some(watchers) = self.watchers.by_job.remove(job_id) else {
            return;
        };
        self.watchers.dirty.remove(job_id);
        // Those whose job's owner is still unknown hear nothing of it.
        let (mut fetching, others): (Vec<Watcher>, Vec<Watcher>) = watchers
            .into_iter()
            .filter(|w| w.checked)
            .partition(|w| w.fetch);
        let in_memory = result.and_then(|(r, object)| match (r.output, object) {
            (OutputRef::Inline(bytes), _) => Some((bytes, r.failures)),
            // The object's own bytes, written and durable before the end.
            (OutputRef::Object(_), Some(bytes)) => {
                Some((ByteBuf::from(Vec::from(bytes)), r.failures))
            }
            _ => None,
        });
        let outcome = in_memory.map(|(bytes, failures)| {
            Reply::Outcome(JobOutcome {
                progress: p.clone(),
                result: bytes,
                failures,
            })
        });
        if let Some(outcome) = outcome.as_ref().filter(|_| marked) {
            for w in fetching.iter() {
                let _ = w.tx.push(outcome.clone());
            }
            fetching.clear();
        }
        let last = Reply::Job(p);
        for w in others {
            let frame = match &outcome {
                Some(o) if w.unmarked => o,
                _ => &last,
            };
            let _ = w.tx.push(frame.clone());
        }
        if fetching.is_empty() {
            return;
        }
        // Its fetch marks it: the collector reads it again.
        self.unfetched.remove(job_id);
        let store = self.store.clone();
        let id = job_id.to_string();
        // Its watchers were checked against its owner.
        let me = ctx.address();
        let read = async move { fetch(&store, &id, None, me).await };
        ctx.spawn(read.into_actor(self).map(move |res, _, _| {
            let frame = res.unwrap_or_else(|e| failed(&e));
            for w in fetching {
                let _ = w.tx.push(frame.clone());
            }
        }));
    }

    /// A client read a result pushed unmarked ([`MarkFetched`]): marked
    /// as a fetch marks it (its retention starts), off the client's path
    /// (nobody waits for it), with the others that come within
    /// [`MARK_DELAY`]: their records read together and their marks one
    /// transaction, so that a work queue's marks do not each take a
    /// ZooKeeper write of their own beside its jobs' creates.
    fn mark_fetched(&mut self, ctx: &mut Context<Self>, msg: MarkFetched) {
        if self.deny_known(&msg.job_id, &msg.peer).is_some() {
            return;
        }
        // Its fetch marks it: the collector reads it again.
        self.unfetched.remove(&msg.job_id);
        if self.watchers.marks.len() >= MAX_MARKS {
            // Not marked: its retention starts at its next fetch.
            tracing::warn!(job = %msg.job_id, "too many fetch marks waiting; this one is dropped");
            return;
        }
        self.watchers.marks.push(msg.job_id);
        if !self.watchers.marks_scheduled {
            self.watchers.marks_scheduled = true;
            ctx.run_later(MARK_DELAY, |act, ctx| act.write_marks(ctx));
        }
    }

    /// Writes the fetch marks that waited (see [`Master::mark_fetched`]).
    fn write_marks(&mut self, ctx: &mut Context<Self>) {
        self.watchers.marks_scheduled = false;
        let ids = std::mem::take(&mut self.watchers.marks);
        let store = self.store.clone();
        let marking = async move {
            let jobs = match store.read_jobs(&ids).await {
                Ok(jobs) => jobs,
                Err(e) => {
                    tracing::warn!(jobs = ids.len(), error = %e, "cannot mark jobs fetched; their retention starts at their next fetch");
                    return Vec::new();
                }
            };
            // Sent at once: the writer joins them in its transactions.
            let marks = jobs.iter().map(|job| async {
                match store.mark_fetched(job).await {
                    Ok(()) => Some(job.id.clone()),
                    Err(e) => {
                        tracing::warn!(job = %job.id, error = %e, "cannot mark a job fetched; its retention starts at its next fetch");
                        None
                    }
                }
            });
            futures::future::join_all(marks)
                .await
                .into_iter()
                .flatten()
                .collect()
        };
        ctx.spawn(marking.into_actor(self).map(|marked: Vec<String>, act, _| {
            for id in marked {
                act.fetch_marked(id);
            }
        }));
    }

    /// Sends a frame to a job's watchers that may see it, forgetting those
    /// that are gone.
    fn push(&mut self, job_id: &str, frame: &Reply) {
        if let Some(owner) = self.owner_of(job_id) {
            self.screen(job_id, owner.as_deref());
        }
        if let Some(ws) = self.watchers.by_job.get_mut(job_id) {
            ws.retain(|w| !w.checked || w.tx.push(frame.clone()));
            if ws.is_empty() {
                self.watchers.by_job.remove(job_id);
            }
        }
    }

    /// Ends a job's watches with `frame` (an error).
    fn end_watch(&mut self, job_id: &str, frame: &Reply) {
        if let Some(ws) = self.watchers.by_job.remove(job_id) {
            for w in ws {
                let _ = w.tx.push(frame.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Adds a watch of job `j`; returns its client's end.
    fn watch(ws: &mut Watchers, fetch: bool) -> tokio::sync::mpsc::Receiver<Reply> {
        let (tx, rx) = crate::transport::Outbox::new(crate::transport::WATCH_QUEUE, "watch");
        let peer = PeerId::new(crate::transport::Role::Client, "c").expect("a valid name");
        ws.by_job.entry("j".into()).or_default().push(Watcher {
            tx,
            fetch,
            unmarked: false,
            peer,
            checked: true,
        });
        rx
    }

    /// Issue 29, finding 4: watches that came before their job's owner was
    /// known are sent nothing, then checked once it is: another client's
    /// is refused, its owner's and an admin's are kept.
    #[test]
    fn watches_of_a_job_not_known_yet_are_checked_when_its_owner_is() {
        let mut ws = Watchers::default();
        let mut add = |role, name: &str| {
            let (tx, rx) = crate::transport::Outbox::new(crate::transport::WATCH_QUEUE, "watch");
            let peer = PeerId::new(role, name).expect("a valid name");
            ws.by_job.entry("j".into()).or_default().push(Watcher {
                tx,
                fetch: true,
                unmarked: false,
                peer,
                checked: false,
            });
            rx
        };
        use crate::transport::Role;
        let mut bob = add(Role::Client, "bob");
        let mut alice = add(Role::Client, "alice");
        let mut ops = add(Role::Admin, "ops");
        assert!(!ws.want_result("j"), "nobody may have it yet");
        let refused = ws.screen("j", Some("client:alice"));
        assert_eq!(refused.len(), 1);
        assert!(
            matches!(bob.try_recv(), Ok(Reply::Error { kind: ErrorKind::NotOwner, message }) if message.contains("belongs to client alice"))
        );
        assert!(
            alice.try_recv().is_err() && ops.try_recv().is_err(),
            "nothing sent yet"
        );
        assert_eq!(ws.by_job["j"].len(), 2);
        assert!(ws.by_job["j"].iter().all(|w| w.checked));
        assert!(ws.want_result("j"));
    }

    #[test]
    fn only_a_live_fetching_watch_wants_the_result() {
        let mut ws = Watchers::default();
        let _plain = watch(&mut ws, false);
        assert!(!ws.want_result("j"), "a watch of progress only");
        let gone = watch(&mut ws, true);
        assert!(ws.want_result("j"), "a live watch for the result");
        drop(gone);
        assert!(!ws.want_result("j"), "its client gave the stream up");
        let _live = watch(&mut ws, true);
        assert!(ws.want_result("j"), "the watch opened again");
        assert!(!ws.want_result("other"), "a job nobody watches");
    }
}
