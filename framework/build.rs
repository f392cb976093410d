//! Embeds the build's commit (its short hash) as `RINGLEADER_COMMIT`, so
//! that `--version` tells two builds of one version apart. Uncommitted
//! changes are not marked: telling them would rebuild the crate at every
//! `git add`. Outside a git work tree (a crate from a registry), the
//! commit is "unknown".

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn main() {
    let commit = git(&["rev-parse", "--short=12", "HEAD"]);
    println!(
        "cargo:rustc-env=RINGLEADER_COMMIT={}",
        commit.unwrap_or_else(|| "unknown".into())
    );
    // A new commit or a change of branch changes the id: watch HEAD and
    // the branch's ref (a file, or packed-refs once packed), wherever this
    // work tree keeps them. A path that does not exist would rerun this
    // at every build.
    let mut watched = vec!["HEAD".to_string()];
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watched.push(branch);
        watched.push("packed-refs".into());
    }
    for name in watched {
        if let Some(path) = git(&["rev-parse", "--git-path", &name]) {
            if std::path::Path::new(&path).exists() {
                println!("cargo:rerun-if-changed={path}");
            }
        }
    }
    println!("cargo:rerun-if-changed=build.rs");
}
