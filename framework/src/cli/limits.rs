//! `limits set KEY [--max-running N] [--rate N [--per 1s|1m|1h]]
//! [--burst B]`, `limits list`, `limits delete KEY`: the cluster-wide
//! limits the master keeps with the cluster and places runs by
//! (`core::scheduler::limits`). A job is under the limits it names
//! (`submit --under KEY`) and those of its type (`Job::limits`). Setting
//! or deleting one takes an admin's or a node's certificate; listing, any.

use std::io::Write as _;
use std::time::Duration;

use clap::{Args, Subcommand};

use super::{block_on, client_config, parse_duration, Conn};
use crate::out;
use crate::wire::{LimitList, LimitSpec};
use crate::Client;

#[derive(Args, Debug, Clone)]
pub(super) struct LimitsArgs {
    #[command(flatten)]
    conn: Conn,
    #[command(subcommand)]
    action: LimitsAction,
}

#[derive(Subcommand, Debug, Clone)]
enum LimitsAction {
    /// Set a limit (replacing its settings if it is set): the jobs under
    /// it start a run only while it admits one, across the cluster.
    Set {
        /// The limit's name, as `submit --under` names it.
        key: String,
        /// Most runs of its jobs held by workers at once (queued or
        /// running): with one task per shard, tasks at once.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        max_running: Option<u32>,
        /// Most runs started per period (`--per`).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        rate: Option<u32>,
        /// The rate's period: `1s` (the default), `1m`, `1h`, or any
        /// duration up to 7 days.
        #[arg(long, value_name = "DURATION", value_parser = parse_duration, requires = "rate")]
        per: Option<Duration>,
        /// Most runs started at once after a pause (default: a tenth of
        /// the rate, at least 1).
        #[arg(long, value_name = "B", value_parser = clap::value_parser!(u32).range(1..), requires = "rate")]
        burst: Option<u32>,
    },
    /// The limits set or named by a job: settings, runs held, tokens
    /// left, jobs and shards waiting on each.
    List {
        /// One JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Delete a limit: the jobs it held back go on.
    Delete {
        /// The limit's name.
        key: String,
    },
}

pub(super) fn run_limits(a: LimitsArgs) -> anyhow::Result<()> {
    block_on(async move {
        let client = Client::connect(client_config(&a.conn)).await?;
        let mut o = out::stdout();
        match a.action {
            LimitsAction::Set {
                key,
                max_running,
                rate,
                per,
                burst,
            } => {
                let spec = LimitSpec {
                    max_running,
                    rate,
                    per_ms: per.map(|p| p.as_millis() as u64),
                    burst,
                };
                client.set_limit(&key, spec).await?;
                writeln!(o, "limit {key}: {}", settings(&spec))?;
            }
            LimitsAction::Delete { key } => {
                client.delete_limit(&key).await?;
                writeln!(o, "limit {key} deleted")?;
            }
            LimitsAction::List { json } => {
                let list = client.limits().await?;
                if json {
                    writeln!(o, "{}", serde_json::to_string(&list)?)?;
                } else {
                    write!(o, "{}", table(&list))?;
                }
            }
        }
        Ok(())
    })
}

/// A limit's settings in words: `at most 4 running, 200 per 1s (burst 20)`.
pub(super) fn settings(spec: &LimitSpec) -> String {
    let core = spec.to_core();
    let mut parts = Vec::new();
    if let Some(n) = core.max_running {
        parts.push(format!("at most {n} running"));
    }
    if let Some(r) = core.rate {
        let per = humantime::format_duration(r.per);
        parts.push(format!("{} per {per} (burst {})", r.n, r.burst));
    }
    parts.join(", ")
}

/// `limits list`, and `status`'s lines.
pub(super) fn table(list: &LimitList) -> String {
    if list.limits.is_empty() {
        return "no limits\n".to_string();
    }
    let mut out = format!(
        "{:<24} {:>8} {:>7} {:>9} {:>10}  {}\n",
        "LIMIT", "RUNNING", "TOKENS", "WAITING", "THROTTLED", "SETTINGS"
    );
    for l in &list.limits {
        let tokens = l.tokens.map_or("-".to_string(), |t| t.to_string());
        let set = l
            .limit
            .as_ref()
            .map_or("not set (named by jobs)".to_string(), settings);
        out.push_str(&format!(
            "{:<24} {:>8} {:>7} {:>9} {:>10}  {set}\n",
            l.key, l.running, tokens, l.waiting_shards, l.throttled
        ));
    }
    out
}
