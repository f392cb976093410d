//! A node binary that runs [`probe::Probe`] tasks.

fn main() -> anyhow::Result<()> {
    ringleader::Node::builder().task::<probe::Probe>().run_cli()
}
