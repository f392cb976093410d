//! The node binary the cluster benchmark starts: probe tasks (`square`-like
//! tasks with a checkable result) and word count.

fn main() -> anyhow::Result<()> {
    ringleader::Node::builder()
        .task::<probe::Probe>()
        .cli_job::<wordcount::WordCount>()
        .run_cli()
}
