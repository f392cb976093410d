//! The node binary the cluster benchmark starts: probe tasks (`square`-like
//! tasks with a checkable result), stamps (tasks that say when they ran)
//! and word count.

fn main() -> anyhow::Result<()> {
    ringleader::Node::builder()
        .task::<probe::Probe>()
        .task::<ringleader_benches::Stamp>()
        .cli_job::<wordcount::WordCount>()
        .run_cli()
}
