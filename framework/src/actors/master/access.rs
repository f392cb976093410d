//! Who may act on a job: the identity that submitted it (its owner), an
//! admin, or a node. Jobs of earlier versions have no owner: anyone may.
//! The gateway asks [`Authorize`] before it hands on a request that names
//! a job (get, fetch, watch, stream, cancel), and a refusal is final; a
//! job that is not there yet is checked again where it is used, with the
//! record or runtime the request acts on: a watch or stream when it
//! attaches and each time its job becomes known to the master (it waits,
//! unseen, until then), a get, fetch or cancel against the record it
//! reads. A read that fails refuses. A resubmission of an id and the
//! listings check the same rule in place.

use actix::prelude::*;

use super::Master;
use crate::metrics as m;
use crate::transport::PeerId;

/// Whether `peer` may act on (and see) a job owned by `owner`.
pub(crate) fn visible(owner: Option<&str>, peer: &PeerId) -> bool {
    owner.is_none_or(|o| peer.acts_for_all() || peer.principal() == o)
}

/// Why `peer` may not act on a job owned by `owner`, if it may not.
pub(crate) fn refusal(owner: Option<&str>, peer: &PeerId, job_id: &str) -> Option<String> {
    let owner = owner.filter(|_| !visible(owner, peer))?;
    let whose = owner.replacen(':', " ", 1);
    Some(format!(
        "job {job_id} belongs to {whose}: only it, an admin or a node may read, watch, cancel or \
         resubmit it (your certificate is {peer}'s)"
    ))
}

/// The `Error` frame of a refusal on another client's job.
pub(crate) fn not_owner(why: String) -> crate::wire::Reply {
    crate::wire::Reply::error(crate::wire::ErrorKind::NotOwner, why)
}

/// May `peer` act on job `job_id`? `None`: yes (or there is no such job
/// now, which the request's own answer says, or which it checks again once
/// the job is there); `Some(refusal)`: no (an `Error` frame of kind
/// `NotOwner`), or its owner cannot be read (`Unavailable`).
#[derive(Message)]
#[rtype(result = "Option<crate::wire::Reply>")]
pub(crate) struct Authorize {
    pub peer: PeerId,
    pub job_id: String,
}

/// Why `peer` may not act on a job of `owner`, counted and logged, if it
/// may not.
pub(crate) fn deny(owner: Option<&str>, peer: &PeerId, job_id: &str) -> Option<String> {
    counted(peer, job_id, refusal(owner, peer, job_id))
}

/// Counts and logs a refusal of `peer` on `job_id`, if there is one.
fn counted(peer: &PeerId, job_id: &str, why: Option<String>) -> Option<String> {
    if why.is_some() {
        metrics::counter!(m::PEER_REFUSALS, "reason" => "not_owner").increment(1);
        tracing::warn!(%peer, job = %job_id, "refused a request on another client's job");
    }
    why
}

impl Master {
    /// Counts and logs a refusal of `peer` on `job_id`.
    pub(super) fn refused(
        &self,
        peer: &PeerId,
        job_id: &str,
        why: Option<String>,
    ) -> Option<String> {
        counted(peer, job_id, why)
    }
}

impl Master {
    /// The owner of a job this master knows (running, being loaded, ended
    /// here, or retained): `None` when it does not know the job.
    pub(super) fn owner_of(&self, job_id: &str) -> Option<Option<String>> {
        let owner = self.core.owner_of(job_id).map(|o| o.map(str::to_string));
        owner.or_else(|| self.retained.get(job_id).map(|j| j.record.owner.clone()))
    }

    /// The refusal to answer `peer` on a job this master knows that is not
    /// its to see, if it is one (counted and logged).
    pub(super) fn deny_known(&self, job_id: &str, peer: &PeerId) -> Option<crate::wire::Reply> {
        let owner = self.owner_of(job_id)?;
        self.check_owner(owner.as_deref(), peer, job_id)
            .map(not_owner)
    }

    /// Why `peer` may not act on a job of `owner` (counted and logged), if
    /// it may not.
    pub(super) fn check_owner(
        &self,
        owner: Option<&str>,
        peer: &PeerId,
        job_id: &str,
    ) -> Option<String> {
        deny(owner, peer, job_id)
    }
}

impl Handler<Authorize> for Master {
    type Result = ResponseActFuture<Self, Option<crate::wire::Reply>>;
    fn handle(&mut self, msg: Authorize, _: &mut Context<Self>) -> Self::Result {
        if msg.peer.acts_for_all() {
            return Box::pin(fut::ready(None));
        }
        // Running, finished here and retained jobs are in memory; the
        // others (finished before a takeover) are read.
        let known = self.owner_of(&msg.job_id);
        if let Some(owner) = known {
            let why = refusal(owner.as_deref(), &msg.peer, &msg.job_id);
            let frame = self.refused(&msg.peer, &msg.job_id, why).map(not_owner);
            return Box::pin(fut::ready(frame));
        }
        let store = self.store.clone();
        let id = msg.job_id.clone();
        let read = async move { store.read_job(&id).await };
        Box::pin(read.into_actor(self).map(move |read, act, _| match read {
            Ok(job) => {
                let owner = job.and_then(|j| j.record.owner);
                let why = refusal(owner.as_deref(), &msg.peer, &msg.job_id);
                act.refused(&msg.peer, &msg.job_id, why).map(not_owner)
            }
            // Never let through on a read that failed.
            Err(e) => Some(crate::wire::Reply::error(
                crate::wire::ErrorKind::Unavailable,
                format!("cannot tell who owns job {} now ({e}): retry", msg.job_id),
            )),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::Role;

    #[test]
    fn owners_admins_and_nodes_may_act_others_may_not() {
        let id = |role, name| PeerId::new(role, name).expect("a valid name");
        let alice = id(Role::Client, "alice");
        let owner = Some(alice.principal());
        let owner = owner.as_deref();
        assert_eq!(refusal(owner, &alice, "j"), None);
        assert_eq!(refusal(owner, &id(Role::Admin, "alice"), "j"), None);
        assert_eq!(refusal(owner, &id(Role::Admin, "ops"), "j"), None);
        assert_eq!(refusal(owner, &id(Role::Node, "n1"), "j"), None);
        let bob = refusal(owner, &id(Role::Client, "bob"), "j").expect("bob is refused");
        assert!(bob.contains("job j belongs to client alice"), "{bob}");
        assert!(bob.contains("client bob's"), "{bob}");
        // A node named like a client is not that client.
        let node_alice = Some("node:alice");
        assert!(refusal(node_alice, &id(Role::Client, "alice"), "j").is_some());
        // Jobs of earlier versions have no owner.
        assert_eq!(refusal(None, &id(Role::Client, "bob"), "j"), None);
        assert!(visible(owner, &alice) && !visible(owner, &id(Role::Client, "bob")));
    }
}
