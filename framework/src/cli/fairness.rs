//! `fairness set KEY --weight W` and `fairness list`: the fairness keys'
//! weights, which the master keeps with the cluster and schedules by
//! (`core::scheduler`: within a priority, keys with shards waiting get
//! them in proportion to their weights). Setting one takes an admin's or
//! a node's certificate; listing, any.

use std::io::Write as _;

use clap::{Args, Subcommand};

use super::{block_on, client_config, Conn};
use crate::out;
use crate::Client;

#[derive(Args, Debug, Clone)]
pub(super) struct FairnessArgs {
    #[command(flatten)]
    conn: Conn,
    #[command(subcommand)]
    action: FairnessAction,
}

#[derive(Subcommand, Debug, Clone)]
enum FairnessAction {
    /// Set a key's weight: under contention, each key with shards waiting
    /// gets slots in proportion to its weight. A job's key is its owner
    /// (`client:NAME`) unless it was submitted with `--fairness-key`.
    Set {
        /// The key.
        key: String,
        /// Its weight, 1 (the default: setting it clears the key) to 65536.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=i64::from(crate::core::MAX_WEIGHT)))]
        weight: u32,
    },
    /// The keys with a weight set or shards waiting: weight, shards
    /// waiting, and the share of the slots each would get now.
    List {
        /// One JSON object.
        #[arg(long)]
        json: bool,
    },
}

pub(super) fn run_fairness(a: FairnessArgs) -> anyhow::Result<()> {
    block_on(async move {
        let client = Client::connect(client_config(&a.conn)).await?;
        match a.action {
            FairnessAction::Set { key, weight } => {
                client.set_fairness(&key, weight).await?;
                writeln!(out::stdout(), "fairness key {key}: weight {weight}")?;
            }
            FairnessAction::List { json } => {
                let list = client.fairness().await?;
                let mut o = out::stdout();
                if json {
                    writeln!(o, "{}", serde_json::to_string(&list)?)?;
                    return Ok(());
                }
                writeln!(
                    o,
                    "{:<32} {:>7} {:>10} {:>7}",
                    "KEY", "WEIGHT", "WAITING", "SHARE"
                )?;
                for (k, share) in list.keys.iter().zip(super::render::shares(&list.keys)) {
                    let share = share.map_or("-".to_string(), |p| format!("{p:.0}%"));
                    writeln!(
                        o,
                        "{:<32} {:>7} {:>10} {:>7}",
                        k.key, k.weight, k.queued, share
                    )?;
                }
            }
        }
        Ok(())
    })
}
