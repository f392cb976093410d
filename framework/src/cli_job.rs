//! Jobs a node binary offers on its command line ([`CliJob`]): their
//! arguments, how they become tasks (uploading local inputs to the
//! cluster's store), and how their result is written. Registered with
//! [`crate::NodeBuilder::cli_job`]; used by [`crate::cli`].

use std::marker::PhantomData;
use std::path::Path;
use std::time::Instant;

use anyhow::{anyhow, Context as _};
use clap::{ArgMatches, Args, FromArgMatches};
use serde_bytes::ByteBuf;

use crate::client::JobReport;
use crate::store::Store;
use crate::task::Job;
use crate::wire::{decode, encode};

/// Errors user hooks return.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A job that can be submitted from the command line.
pub trait CliJob: Job {
    /// Its arguments (added to `submit`, `result` and `local`).
    type Args: Args + FromArgMatches + Send + 'static;
    /// Builds the tasks from the arguments (client side).
    fn tasks(args: &Self::Args) -> Result<Vec<Self::Task>, BoxError>;
    /// The arguments that name input files, if any: `submit --upload`
    /// copies those that are local paths into the cluster's store and
    /// replaces them with the objects' URLs before [`CliJob::tasks`] runs.
    fn inputs(args: &mut Self::Args) -> Vec<&mut String> {
        let _ = args;
        Vec::new()
    }
    /// Writes or prints the result (client side).
    fn output(args: &Self::Args, result: Self::Result, report: &JobReport) -> Result<(), BoxError>;
}

pub(crate) type Finish = Box<dyn FnOnce(&[u8], &JobReport) -> anyhow::Result<()> + Send>;

pub(crate) trait ErasedCliJob: Send + Sync {
    fn name(&self) -> &'static str;
    fn default_shard_size(&self) -> u32;
    fn augment(&self, cmd: clap::Command) -> clap::Command;
    fn plan(
        &self,
        m: &ArgMatches,
        with_tasks: bool,
        upload: Option<&Store>,
    ) -> anyhow::Result<(Vec<ByteBuf>, Finish)>;
}

pub(crate) struct CliEntry<J>(PhantomData<fn() -> J>);

impl<J> Default for CliEntry<J> {
    fn default() -> Self {
        CliEntry(PhantomData)
    }
}

impl<J: CliJob> ErasedCliJob for CliEntry<J> {
    fn name(&self) -> &'static str {
        J::NAME
    }
    fn default_shard_size(&self) -> u32 {
        J::default_shard_size()
    }
    fn augment(&self, cmd: clap::Command) -> clap::Command {
        J::Args::augment_args(cmd)
    }
    fn plan(
        &self,
        m: &ArgMatches,
        with_tasks: bool,
        upload: Option<&Store>,
    ) -> anyhow::Result<(Vec<ByteBuf>, Finish)> {
        let mut args = J::Args::from_arg_matches(m)?;
        if let Some(store) = upload {
            for input in J::inputs(&mut args) {
                if let Some(url) = upload_input(store, input)? {
                    *input = url;
                }
            }
        }
        let tasks = if with_tasks {
            J::tasks(&args)
                .map_err(|e| anyhow!("{e}"))?
                .iter()
                .map(|t| encode("task", t).map(ByteBuf::from))
                .collect::<Result<Vec<_>, _>>()?
        } else {
            Vec::new()
        };
        let finish: Finish = Box::new(move |bytes, report| {
            let result: J::Result = if bytes.is_empty() {
                J::Result::default()
            } else {
                decode("job result", bytes)?
            };
            J::output(&args, result, report).map_err(|e| anyhow!("{e}"))
        });
        Ok((tasks, finish))
    }
}

/// Copies `input` into `store` if it is a local file; returns its URL.
fn upload_input(store: &Store, input: &str) -> anyhow::Result<Option<String>> {
    if input.contains("://") && !input.starts_with("file://") {
        return Ok(None);
    }
    let path = Path::new(input.strip_prefix("file://").unwrap_or(input));
    let size = std::fs::metadata(path)
        .with_context(|| format!("cannot read input {}", path.display()))?
        .len();
    let file_name = path
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| !n.is_empty())
        .unwrap_or("input");
    let name = format!("inputs/{}/{file_name}", uuid::Uuid::new_v4().simple());
    let url = store.url_of(&name);
    eprintln!(
        "uploading {} ({:.1} MiB) to {url}",
        path.display(),
        size as f64 / f64::from(1 << 20)
    );
    let started = Instant::now();
    let mut next_report = size / 4;
    let sent = futures::executor::block_on(store.upload(path, &name, move |sent| {
        if sent >= next_report && sent < size {
            eprintln!("  {:.0}%", sent as f64 * 100.0 / size.max(1) as f64);
            next_report = sent + size / 4;
        }
    }))
    .with_context(|| format!("uploading {}", path.display()))?;
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "  uploaded {:.1} MiB in {secs:.1} s ({:.0} MB/s)",
        sent as f64 / f64::from(1 << 20),
        sent as f64 / 1e6 / secs.max(1e-9)
    );
    Ok(Some(url))
}
