#![allow(clippy::unwrap_used)]
//! The README's custom task, as a new user takes it: its code block
//! becomes a crate of its own outside the workspace (built with the
//! workspace's lock file, so that it needs nothing new), and the README's
//! commands run against it: `local` with the output the README shows, a
//! `submit` to a cluster of its nodes, and `result --wait` of a detached job.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use ringleader::testkit::*;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .unwrap()
}

/// The body of the first fenced block of `lang` after `marker`.
fn block_after(text: &str, marker: &str, lang: &str) -> String {
    let start = text
        .find(marker)
        .unwrap_or_else(|| panic!("README has no {marker:?}"));
    let open = format!("```{lang}\n");
    let from = text[start..].find(&open).unwrap() + start + open.len();
    let to = text[from..].find("```").unwrap() + from;
    text[from..to].to_string()
}

/// Builds the README's task as a crate of its own; returns its binary.
fn build_readme_crate(dir: &Path) -> PathBuf {
    let readme = std::fs::read_to_string(workspace().join("README.md")).unwrap();
    let code = block_after(&readme, "Implement a task in your own crate:", "rust");
    std::fs::create_dir_all(dir.join("src")).unwrap();
    std::fs::write(dir.join("src/main.rs"), code).unwrap();
    std::fs::write(
        dir.join("Cargo.toml"),
        format!(
            "[package]\nname = \"readme-square\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n\
             [dependencies]\nringleader = {{ path = {:?} }}\nserde = {{ version = \"1\", \
             features = [\"derive\"] }}\nanyhow = \"1\"\n\n[workspace]\n",
            workspace().join("framework")
        ),
    )
    .unwrap();
    std::fs::copy(workspace().join("Cargo.lock"), dir.join("Cargo.lock")).unwrap();
    // The workspace's target directory: what its build already compiled
    // with the same features is reused (cargo releases the directory's
    // lock while tests run).
    let target = workspace().join("target");
    let out = Command::new(env!("CARGO"))
        .args(["build", "--offline", "--quiet", "--manifest-path"])
        .arg(dir.join("Cargo.toml"))
        .env("CARGO_TARGET_DIR", &target)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the README's task does not build as a crate of its own:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    target.join("debug/readme-square")
}

#[test]
fn the_readme_task_builds_as_its_own_crate_and_its_commands_work() {
    let crate_dir = tempfile::tempdir().unwrap();
    let bin = build_readme_crate(crate_dir.path());

    // `local`, fed as the README shows, prints what the README says.
    let readme = std::fs::read_to_string(workspace().join("README.md")).unwrap();
    let shown = block_after(&readme, "A bare task collects every output by index.", "sh");
    let expected: Vec<&str> = shown.lines().filter_map(|l| l.strip_prefix("# ")).collect();
    assert_eq!(expected.len(), 2, "{shown}");
    assert!(
        shown.contains("printf '3\\n4\\n' |") && shown.contains("local --nodes 2"),
        "{shown}"
    );
    let mut local = Command::new(&bin)
        .args(["local", "--nodes", "2"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        local.stdin.take().unwrap().write_all(b"3\n4\n").unwrap();
    }
    let out = local.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.lines().collect::<Vec<_>>(), expected);

    // A cluster of its nodes: submit and wait, then detach and fetch later.
    let mut c = Cluster::new(&bin);
    c.node("n0", &[]);
    c.node("n1", &[]);
    rt().block_on(async {
        let zk = c.zk().await;
        c.workers(&zk, 2, Duration::from_secs(30)).await;
    });
    let tasks = c.path("tasks.jsonl");
    std::fs::write(&tasks, "5\n6\n7\n").unwrap();
    let tasks = tasks.to_str().unwrap();
    let o = c.cli("submit", &[tasks]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "{\"index\":0,\"output\":25}\n{\"index\":1,\"output\":36}\n{\"index\":2,\"output\":49}\n"
    );
    let o = c.cli(
        "submit",
        &["square", "--detach", "--job-id", "later", tasks],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "later");
    let o = c.cli("result", &["later", "--wait"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout).lines().count(), 3);
}
