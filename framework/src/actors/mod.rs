//! The actix actors, thin shells around `core` decisions and `coord` /
//! `transport` I/O: [`election::Election`] (candidacy), [`master::Master`]
//! (the supervisor of an elected node) and [`worker::Worker`].

pub(crate) mod election;
pub(crate) mod gateway;
pub(crate) mod master;
pub(crate) mod worker;

use actix::Message;

/// Asks an actor to stop.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Stop;

/// Held by every actor of a session; the node waits for all clones to be
/// dropped before it closes the ZooKeeper session.
pub(crate) type Alive = tokio::sync::mpsc::Sender<()>;

/// Why a session's actors gave up (the node then starts a new session).
#[derive(Debug)]
pub(crate) enum Restart {
    /// Something failed: the reason.
    Failed(String),
    /// The master stepped down (`core::standing`): the node stands for
    /// election again only after a pause.
    SteppedDown(String),
}

impl Restart {
    /// Why, in words.
    pub(crate) fn reason(&self) -> &str {
        match self {
            Restart::Failed(r) | Restart::SteppedDown(r) => r,
        }
    }
}

/// Where a session's actors say they gave up. Bounded by
/// [`FATAL_QUEUE`]: the node acts on the first reason (it restarts the
/// session and every actor of it), so one that finds the queue full is
/// dropped (`try_send`), as are those sent after the node stopped reading.
pub(crate) type Fatal = tokio::sync::mpsc::Sender<Restart>;

/// Reasons to restart a session that may wait at once (one per actor of a
/// session, with room to spare).
pub(crate) const FATAL_QUEUE: usize = 8;
