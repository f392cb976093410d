//! A node binary that runs [`probe::Probe`] tasks, collected or summed.

fn main() -> anyhow::Result<()> {
    ringleader::Node::builder()
        .task::<probe::Probe>()
        .job::<probe::FragileSum>()
        .run_cli()
}
