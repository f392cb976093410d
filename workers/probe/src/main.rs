//! A node binary that runs [`probe::Probe`] tasks, collected or summed.

fn main() -> anyhow::Result<()> {
    let builder = ringleader::Node::builder();
    // A later build of the application, whose `probe` task has a field
    // more (tests of a rolling upgrade of task types).
    let builder = match std::env::var("PROBE_TYPES").as_deref() {
        Ok("2") => builder.task::<probe::ProbeV2>(),
        _ => builder.task::<probe::Probe>(),
    };
    builder.job::<probe::FragileSum>().run_cli()
}
