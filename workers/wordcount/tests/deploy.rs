#![allow(clippy::unwrap_used)]
//! `examples/deploy/` stays true to the binary.

/// The environment file sets (or shows, commented) a `RINGLEADER_*`
/// variable for every setting `node --help` lists, and names no variable
/// the node does not read.
#[test]
fn the_deploy_environment_file_covers_every_node_setting() {
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_wordcount"))
        .args(["node", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    let wanted: std::collections::BTreeSet<&str> = help
        .split("[env: ")
        .skip(1)
        .filter_map(|s| s.split(['=', ']']).next())
        .collect();
    assert!(wanted.len() >= 15, "{wanted:?}");
    let env = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/deploy/node.env"
    ))
    .unwrap();
    let given: std::collections::BTreeSet<&str> = env
        .lines()
        .map(|l| l.trim_start_matches('#'))
        .filter(|l| l.starts_with("RINGLEADER_"))
        .filter_map(|l| l.split('=').next())
        .collect();
    assert_eq!(
        given, wanted,
        "examples/deploy/node.env and `node --help` differ"
    );
}
