#![allow(clippy::unwrap_used)]
//! The README's custom task and client, as a new user takes them: its
//! code blocks become a crate of its own outside the workspace (built with
//! the workspace's lock file, so that it needs nothing new), and the
//! README's commands run against it: `local` with the output the README
//! shows, a `submit` to a cluster of its nodes, `result --wait` of a
//! detached job, and the client program against a lingering `local`.

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

/// Builds the README's crate (its task, node binary and client program)
/// as a crate of its own; returns the directory of its binaries.
fn build_readme_crate(dir: &Path) -> PathBuf {
    let readme = std::fs::read_to_string(workspace().join("README.md")).unwrap();
    let lib = block_after(&readme, "Implement a task in your own crate", "rust");
    let main = block_after(&readme, "and the node's binary", "rust");
    let client = block_after(
        &readme,
        "From Rust, a client is a program of its own",
        "rust",
    );
    std::fs::create_dir_all(dir.join("src/bin")).unwrap();
    std::fs::write(dir.join("src/lib.rs"), lib).unwrap();
    std::fs::write(dir.join("src/main.rs"), main).unwrap();
    std::fs::write(dir.join("src/bin/client.rs"), client).unwrap();
    std::fs::write(
        dir.join("Cargo.toml"),
        format!(
            "[package]\nname = \"squares\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n\
             [dependencies]\nringleader = {{ path = {:?} }}\nserde = {{ version = \"1\", \
             features = [\"derive\"] }}\nanyhow = \"1\"\ntokio = {{ version = \"1\", \
             features = [\"macros\", \"rt\", \"time\"] }}\n\n[workspace]\n",
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
        .args(["build", "--offline", "--quiet", "--bins", "--manifest-path"])
        .arg(dir.join("Cargo.toml"))
        .env("CARGO_TARGET_DIR", &target)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the README's crate does not build as a crate of its own:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    target.join("debug")
}

#[test]
fn the_readme_task_builds_as_its_own_crate_and_its_commands_work() {
    let crate_dir = tempfile::tempdir().unwrap();
    let bin = build_readme_crate(crate_dir.path()).join("squares");

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

#[test]
fn the_readme_client_program_runs_against_a_lingering_local_cluster() {
    use std::io::Write;
    let crate_dir = tempfile::tempdir().unwrap();
    let bins = build_readme_crate(crate_dir.path());
    let readme = std::fs::read_to_string(workspace().join("README.md")).unwrap();
    let said = block_after(
        &readme,
        "From Rust, a client is a program of its own",
        "rust",
    );
    assert!(said.contains("ClientConfig::from_env()"), "{said}");
    // As the README says: `echo 1 | ... local --nodes 2 --linger-secs 600`.
    let mut local = Command::new(bins.join("squares"))
        .args(["local", "--nodes", "2", "--linger-secs", "600"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    local.stdin.take().unwrap().write_all(b"1\n").unwrap();
    let mut lines = Lines::of(local.stderr.take().unwrap());
    let export = lines.until(Duration::from_secs(120), |line| {
        line.trim().strip_prefix("export ").map(str::to_string)
    });
    let vars: Vec<(String, String)> = export
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert_eq!(vars.len(), 4, "{export}");
    let out = Command::new(bins.join("client"))
        .envs(vars)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let _ = Command::new("kill")
        .args(["-INT", &local.id().to_string()])
        .status();
    let ended = local.wait().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "1000 squares, all correct\n100 one-task jobs, all correct\n"
    );
    assert!(ended.success(), "{ended:?}");
}
