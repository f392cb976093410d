//! The election actor: one candidacy per ZooKeeper session, through
//! zookeeper-client's lock recipe (Curator-compatible
//! `_c_<uuid>-latch-NNNNNNNNNN` EPHEMERAL_SEQUENTIAL znodes; each candidate
//! watches only its predecessor, so a leader change wakes one candidate).
//! Winning starts the [`Master`] supervisor with a bumped epoch.

use actix::prelude::*;

use super::master::{Master, MasterSettings};
use super::{Alive, Stop};
use crate::coord::{CoordError, Session};
use crate::metrics as m;
use crate::store::Store;

pub(crate) struct Election {
    /// How long to wait before standing (after a step-down).
    pub pause: std::time::Duration,
    pub session: Session,
    pub store: Store,
    pub settings: MasterSettings,
    pub master: Option<Addr<Master>>,
    pub _alive: Alive,
}

impl Actor for Election {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        metrics::gauge!(m::NODE_ROLE, "role" => "candidate").set(1.0);
        let session = self.session.clone();
        let store = self.store.clone();
        let node_id = self.settings.node_id.clone();
        let pause = self.pause;
        if !pause.is_zero() {
            tracing::warn!(
                pause_s = pause.as_secs(),
                "this node's master stepped down: it stands for election again after a pause"
            );
        }
        let fut = async move {
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
                tracing::info!("standing for election again");
            }
            let won = session.campaign(&node_id).await?;
            let store = crate::coord::LeaderStore::take_over(won, store).await?;
            Ok::<_, CoordError>((store, std::time::Instant::now()))
        };
        ctx.spawn(fut.into_actor(self).map(|res, act, ctx| match res {
            Ok((store, won)) => {
                tracing::info!(epoch = store.epoch(), "taking over as master");
                act.master = Some(Master::new(store, act.settings.clone(), won).start());
            }
            Err(e) => {
                tracing::error!(error = %e, "election failed");
                let _ = act
                    .settings
                    .fatal
                    .try_send(super::Restart::Failed(format!("election failed: {e}")));
                ctx.stop();
            }
        }));
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        metrics::gauge!(m::NODE_ROLE, "role" => "candidate").set(0.0);
        if let Some(m) = self.master.take() {
            m.do_send(Stop);
        }
    }
}

impl Handler<Stop> for Election {
    type Result = ();
    fn handle(&mut self, _: Stop, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}
