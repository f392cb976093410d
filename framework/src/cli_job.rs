//! Jobs a node binary offers on its command line: their arguments, how
//! they become tasks (uploading local inputs to the cluster's store), and
//! how a finished job's result is written. Every registered job has an
//! entry: a [`CliJob`] brings its own arguments and output; a bare task or
//! a plain [`Job`] reads its tasks as JSON lines and writes its result as
//! JSON. Registered through [`crate::NodeBuilder`]; used by [`crate::cli`].

use std::io::{BufRead, IsTerminal, Write};
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{anyhow, Context as _};
use clap::{ArgMatches, Args, FromArgMatches};
use serde::Serialize;
use serde_bytes::ByteBuf;

use crate::client::JobReport;
use crate::store::Store;
use crate::task::{Collect, Job, Task};
use crate::wire::{decode, encode};

/// Errors user hooks return.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A job that can be submitted from the command line with arguments of
/// its own (`submit JOB ARGS...`, `local JOB ARGS...`).
///
/// Its result is written by [`CliJob::output`] from the result alone, so
/// that `result JOB-ID` needs no job arguments: where it goes is the
/// command's `--output FILE` (stdout without it).
pub trait CliJob: Job {
    /// Its arguments (added to `submit JOB` and `local JOB`).
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
    /// Writes the result of a finished job (client side): to
    /// [`Output::writer`], or a summary on stdout and the whole to
    /// [`Output::path`] when one is given. Failed tasks are reported by
    /// the framework (with a non-zero exit) after this returns.
    fn output(result: Self::Result, report: &JobReport, out: &Output) -> Result<(), BoxError>;
}

/// Where a finished job's result goes: the file of `--output`, or stdout.
#[derive(Debug, Clone, Default)]
pub struct Output {
    path: Option<PathBuf>,
}

impl Output {
    /// To `path`, or stdout if `None`.
    pub fn new(path: Option<PathBuf>) -> Self {
        Output { path }
    }
    /// The file given with `--output`, if any.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }
    /// The file (created or truncated), or stdout.
    pub fn writer(&self) -> std::io::Result<Box<dyn Write>> {
        Ok(match &self.path {
            Some(p) => Box::new(std::io::BufWriter::new(std::fs::File::create(p)?)),
            None => Box::new(std::io::BufWriter::new(crate::out::stdout())),
        })
    }
}

pub(crate) trait ErasedCliJob: Send + Sync {
    fn name(&self) -> &'static str;
    /// One line for the list of jobs in `--help`.
    fn about(&self) -> &'static str;
    /// The job's own shard size, if it sets one (else: automatic).
    fn default_shard_size(&self) -> Option<u32>;
    fn augment(&self, cmd: clap::Command) -> clap::Command;
    /// The encoded tasks the arguments describe.
    fn tasks(&self, m: &ArgMatches, upload: Option<&Store>) -> anyhow::Result<Vec<ByteBuf>>;
    /// Writes an encoded result.
    fn output(&self, bytes: &[u8], report: &JobReport, out: &Output) -> anyhow::Result<()>;
    /// Writes one streamed shard's encoded partial as JSON lines: a bare
    /// task's outputs one per line with their indexes, any other job's
    /// partial as `{"shard":"I-G","partial":...}`.
    fn stream_item(
        &self,
        shard: crate::core::ShardKey,
        bytes: &[u8],
        w: &mut dyn Write,
    ) -> anyhow::Result<()>;
}

/// `{"shard":"I-G","partial":P}` and a newline.
fn partial_line<R: Serialize>(
    shard: crate::core::ShardKey,
    partial: &R,
    w: &mut dyn Write,
) -> anyhow::Result<()> {
    #[derive(Serialize)]
    struct Line<'a, R> {
        shard: String,
        partial: &'a R,
    }
    serde_json::to_writer(
        &mut *w,
        &Line {
            shard: shard.to_string(),
            partial,
        },
    )?;
    w.write_all(b"\n")?;
    Ok(())
}

/// One JSON line per `(index, output)`.
fn output_lines<O: Serialize>(outputs: &[(u64, O)], w: &mut dyn Write) -> anyhow::Result<()> {
    #[derive(Serialize)]
    struct Line<'a, O> {
        index: u64,
        output: &'a O,
    }
    for (index, output) in outputs {
        serde_json::to_writer(
            &mut *w,
            &Line {
                index: *index,
                output,
            },
        )?;
        w.write_all(b"\n")?;
    }
    Ok(())
}

fn decode_result<R: serde::de::DeserializeOwned + Default>(bytes: &[u8]) -> anyhow::Result<R> {
    if bytes.is_empty() {
        Ok(R::default())
    } else {
        Ok(decode("job result", bytes)?)
    }
}

fn encode_all<T: Serialize>(tasks: &[T]) -> anyhow::Result<Vec<ByteBuf>> {
    Ok(tasks
        .iter()
        .map(|t| encode("task", t).map(ByteBuf::from))
        .collect::<Result<Vec<_>, _>>()?)
}

/// A [`CliJob`]'s entry.
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
    fn about(&self) -> &'static str {
        "arguments of its own (see its --help)"
    }
    fn default_shard_size(&self) -> Option<u32> {
        J::default_shard_size()
    }
    fn augment(&self, cmd: clap::Command) -> clap::Command {
        J::Args::augment_args(cmd)
    }
    fn tasks(&self, m: &ArgMatches, upload: Option<&Store>) -> anyhow::Result<Vec<ByteBuf>> {
        let mut args = J::Args::from_arg_matches(m)?;
        if let Some(store) = upload {
            for input in J::inputs(&mut args) {
                if let Some(url) = upload_input(store, input)? {
                    *input = url;
                }
            }
        }
        encode_all(&J::tasks(&args).map_err(|e| anyhow!("{e}"))?)
    }
    fn output(&self, bytes: &[u8], report: &JobReport, out: &Output) -> anyhow::Result<()> {
        J::output(decode_result(bytes)?, report, out).map_err(|e| anyhow!("{e}"))
    }
    fn stream_item(
        &self,
        shard: crate::core::ShardKey,
        bytes: &[u8],
        w: &mut dyn Write,
    ) -> anyhow::Result<()> {
        partial_line(shard, &decode_result::<J::Result>(bytes)?, w)
    }
}

/// The tasks of a job without arguments of its own.
#[derive(Args, Debug)]
struct JsonTasks {
    /// A file of tasks, one JSON value per line (`-` or nothing: stdin).
    tasks: Option<PathBuf>,
}

impl JsonTasks {
    fn read<T: serde::de::DeserializeOwned + Serialize>(
        m: &ArgMatches,
        name: &str,
    ) -> anyhow::Result<Vec<ByteBuf>> {
        let args = JsonTasks::from_arg_matches(m)?;
        let (reader, from): (Box<dyn BufRead>, String) = match &args.tasks {
            Some(p) if p.as_os_str() != "-" => (
                Box::new(std::io::BufReader::new(
                    std::fs::File::open(p)
                        .with_context(|| format!("cannot read tasks from {}", p.display()))?,
                )),
                p.display().to_string(),
            ),
            _ => {
                if std::io::stdin().is_terminal() {
                    eprintln!(
                        "reading {name} tasks from stdin, one JSON value per line (Ctrl-D ends)"
                    );
                }
                (Box::new(std::io::stdin().lock()), "stdin".to_string())
            }
        };
        let mut tasks = Vec::new();
        for (i, line) in reader.lines().enumerate() {
            let line = line.with_context(|| format!("reading tasks from {from}"))?;
            if line.trim().is_empty() {
                continue;
            }
            let task: T = serde_json::from_str(&line).with_context(|| {
                format!(
                    "{from}, line {}: not a {name} task as JSON: {}",
                    i + 1,
                    line.chars().take(80).collect::<String>()
                )
            })?;
            tasks.push(ByteBuf::from(encode("task", &task)?));
        }
        if tasks.is_empty() {
            anyhow::bail!("no tasks in {from}: give one JSON value per line");
        }
        Ok(tasks)
    }
}

/// A bare task's entry: tasks as JSON lines in, one JSON line per output
/// (`{"index":I,"output":O}`) out.
pub(crate) struct TaskLines<T>(PhantomData<fn() -> T>);

impl<T> Default for TaskLines<T> {
    fn default() -> Self {
        TaskLines(PhantomData)
    }
}

impl<T: Task> ErasedCliJob for TaskLines<T> {
    fn name(&self) -> &'static str {
        T::NAME
    }
    fn about(&self) -> &'static str {
        "tasks as JSON lines; one JSON line per output"
    }
    fn default_shard_size(&self) -> Option<u32> {
        <Collect<T> as Job>::default_shard_size()
    }
    fn augment(&self, cmd: clap::Command) -> clap::Command {
        JsonTasks::augment_args(cmd)
    }
    fn tasks(&self, m: &ArgMatches, _upload: Option<&Store>) -> anyhow::Result<Vec<ByteBuf>> {
        JsonTasks::read::<T>(m, T::NAME)
    }
    fn output(&self, bytes: &[u8], _report: &JobReport, out: &Output) -> anyhow::Result<()> {
        let outputs: Vec<(u64, T::Output)> = decode_result(bytes)?;
        let mut w = out.writer()?;
        output_lines(&outputs, &mut w)?;
        w.flush()?;
        Ok(())
    }
    fn stream_item(
        &self,
        _shard: crate::core::ShardKey,
        bytes: &[u8],
        w: &mut dyn Write,
    ) -> anyhow::Result<()> {
        output_lines(&decode_result::<Vec<(u64, T::Output)>>(bytes)?, w)
    }
}

/// A plain [`Job`]'s entry: tasks as JSON lines in, its result as one
/// JSON document out.
pub(crate) struct JobJson<J>(PhantomData<fn() -> J>);

impl<J> Default for JobJson<J> {
    fn default() -> Self {
        JobJson(PhantomData)
    }
}

impl<J: Job> ErasedCliJob for JobJson<J> {
    fn name(&self) -> &'static str {
        J::NAME
    }
    fn about(&self) -> &'static str {
        "tasks as JSON lines; the result as JSON"
    }
    fn default_shard_size(&self) -> Option<u32> {
        J::default_shard_size()
    }
    fn augment(&self, cmd: clap::Command) -> clap::Command {
        JsonTasks::augment_args(cmd)
    }
    fn tasks(&self, m: &ArgMatches, _upload: Option<&Store>) -> anyhow::Result<Vec<ByteBuf>> {
        JsonTasks::read::<J::Task>(m, J::NAME)
    }
    fn output(&self, bytes: &[u8], _report: &JobReport, out: &Output) -> anyhow::Result<()> {
        let result: J::Result = decode_result(bytes)?;
        let mut w = out.writer()?;
        serde_json::to_writer(&mut w, &result)?;
        w.write_all(b"\n")?;
        w.flush()?;
        Ok(())
    }
    fn stream_item(
        &self,
        shard: crate::core::ShardKey,
        bytes: &[u8],
        w: &mut dyn Write,
    ) -> anyhow::Result<()> {
        partial_line(shard, &decode_result::<J::Result>(bytes)?, w)
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
