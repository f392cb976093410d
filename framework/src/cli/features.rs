//! `features show` and `features upgrade`: the cluster's feature level,
//! the level each live node follows, and raising it once they all do
//! ([`crate::core::features`] decides; this reads and writes ZooKeeper
//! with a node's certificate).

use std::fmt::Write as _;
use std::io::Write as _;
use std::time::Duration;

use clap::{Args, Subcommand};

use super::{block_on, Conn};
use crate::coord::{FeaturesRecord, Layout, NodeInfo, Session};
use crate::core::features::{self, Live};

#[derive(Args, Debug, Clone)]
pub(super) struct FeaturesArgs {
    #[command(flatten)]
    conn: Conn,
    #[command(subcommand)]
    action: FeaturesAction,
}

#[derive(Subcommand, Debug, Clone)]
enum FeaturesAction {
    /// The cluster's feature level, what each level turns on, and the
    /// level each live node follows.
    Show,
    /// Raise the level to the highest every live node follows (it is
    /// never lowered: afterwards, nodes of a build that does not follow
    /// it refuse to start).
    Upgrade,
}

/// The live nodes as the level's decisions see them (a node without a
/// registration is of a release before feature levels: it follows none).
fn lives(nodes: &std::collections::BTreeMap<String, Option<NodeInfo>>) -> Vec<Live> {
    crate::coord::Session::follows(nodes)
}

fn show(level: u32, nodes: &std::collections::BTreeMap<String, Option<NodeInfo>>) -> String {
    let mut out = format!(
        "feature level {level} (this build follows up to {})\n",
        features::SUPPORTED
    );
    for (l, what) in features::LEVELS {
        let on = if *l <= level { "on" } else { "off" };
        let _ = writeln!(out, "level {l}: {what} ({on})");
    }
    for (node, info) in nodes {
        let _ = match info {
            Some(i) => writeln!(
                out,
                "node {node} follows {} ({}, {})",
                i.features, i.role, i.build
            ),
            None => writeln!(
                out,
                "node {node} follows 0 (a release before feature levels)"
            ),
        };
    }
    let _ = match features::raise_to(level, &lives(nodes)) {
        Ok(to) => writeln!(out, "`features upgrade` would raise it to {to}"),
        Err(why) => writeln!(out, "{why}"),
    };
    out
}

pub(super) fn run_features(a: FeaturesArgs) -> anyhow::Result<()> {
    block_on(async move {
        // A node's certificate: only nodes may read and write the
        // cluster's znodes.
        let identity =
            crate::transport::tls::Identity::node(&a.conn.certs, None, || "features".into())?;
        let tls = a
            .conn
            .zk_tls
            .then(|| crate::client::zk_tls(&identity, &a.conn.certs));
        let layout = Layout::new(&a.conn.cluster);
        let zk = Session::connect_with(&a.conn.zk, Duration::from_secs(10), layout, tls.as_ref())
            .await?;
        let (level, version) = zk.feature_level().await?;
        let nodes = zk.live_nodes().await?;
        match a.action {
            FeaturesAction::Show => {
                write!(crate::out::stdout(), "{}", show(level, &nodes))?;
            }
            FeaturesAction::Upgrade => {
                let to = match features::raise_to(level, &lives(&nodes)) {
                    Ok(to) => to,
                    Err(features::FeatureError::Highest { .. }) => {
                        writeln!(
                            crate::out::stdout(),
                            "feature level {level}: the highest this build follows; nothing to raise"
                        )?;
                        return Ok(());
                    }
                    Err(e) => return Err(e.into()),
                };
                let record = FeaturesRecord {
                    level: to,
                    raised_ms: std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_millis() as u64),
                    by: crate::build_id(&super::program(), None),
                };
                match zk.set_feature_level(&record, version).await {
                    Ok(()) => {}
                    Err(e) if e.is_conflict() || e.is_node_exists() => {
                        anyhow::bail!(
                            "the feature level changed while this command ran: run it again"
                        )
                    }
                    Err(e) => return Err(e.into()),
                }
                // A node that registered after the read, of a build that
                // does not follow the new level, reads it as it starts and
                // stops; say so here too.
                let late: Vec<Live> = lives(&zk.live_nodes().await?)
                    .into_iter()
                    .filter(|l| l.follows < to)
                    .collect();
                for l in &late {
                    tracing::warn!(node = %l.node, follows = l.follows, "a node that joined meanwhile does not follow the new level: it stops when it next starts a session");
                }
                let mut out = format!("feature level raised from {level} to {to}\n");
                for (l, what) in features::LEVELS {
                    if *l > level && *l <= to {
                        let _ = writeln!(out, "level {l}: {what}");
                    }
                }
                write!(crate::out::stdout(), "{out}")?;
            }
        }
        Ok(())
    })
}
