//! The architecture's boundaries, checked: each module ("room") may name
//! only the crates and modules its place in ARCHITECTURE.md allows. A
//! change that crosses a boundary fails here with the file and line.
//!
//! `core` is a crate of its own (`framework/core`, `ringleader-core`): its
//! manifest keeps runtimes, sockets, ZooKeeper and QUIC out, which the
//! compiler checks; this test checks what a manifest cannot say (no clock,
//! no files), with its files named `core/...`. The other rooms stay one
//! crate with this test rather than a crate each: they share types both
//! ways, and splitting them would cost more compilation units in every
//! build of a 2-core CI for a check this test makes in milliseconds.

use std::path::{Path, PathBuf};

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("src is readable") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The file's code without comments and without its `#[cfg(test)]`
/// module (tests may use what the room itself must not); none for a file
/// of tests (`#![cfg(test)]`).
fn code(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let t = line.trim_start();
        if t.starts_with("#[cfg(test)]") || t.starts_with("#![cfg(test)]") {
            break;
        }
        if t.starts_with("//") {
            continue;
        }
        // Strings may mention anything (log filters, messages).
        let mut plain = String::new();
        let mut in_str = false;
        let mut prev = ' ';
        for c in line.chars() {
            if c == '"' && prev != '\\' {
                in_str = !in_str;
            } else if !in_str {
                plain.push(c);
            }
            prev = c;
        }
        out.push((i + 1, plain));
    }
    out
}

struct Rule {
    /// What the rule says, as ARCHITECTURE.md says it.
    says: &'static str,
    /// Paths (relative to `src/`, `/`-separated) the rule allows.
    allowed: fn(&str) -> bool,
    /// Text that names what is guarded.
    needles: &'static [&'static str],
}

fn rules() -> Vec<Rule> {
    vec![
        Rule {
            says: "only coord/ (and the test harness) imports zookeeper-client",
            allowed: |p| p.starts_with("coord/") || p.starts_with("testkit/"),
            needles: &["zookeeper_client"],
        },
        Rule {
            says: "only transport/ imports quinn",
            allowed: |p| p.starts_with("transport/"),
            needles: &["quinn::", "use quinn"],
        },
        Rule {
            says: "only transport/ (connections) and pki.rs (certificate files) use rustls",
            allowed: |p| p.starts_with("transport/") || p == "pki.rs",
            needles: &["rustls::", "use rustls", "rustls_pemfile"],
        },
        Rule {
            says: "the PKI knows certificates, not connections: pki.rs names no transport",
            allowed: |p| p != "pki.rs",
            needles: &["crate::transport"],
        },
        Rule {
            says: "only wire/ (frames, user values) and coord/ (records) know MessagePack",
            allowed: |p| p.starts_with("wire/") || p.starts_with("coord/"),
            needles: &["rmp_serde"],
        },
        Rule {
            says: "core/ does no I/O and reads no clock: no actix, tokio, sockets, files, ZooKeeper or store",
            allowed: |p| !p.starts_with("core/"),
            needles: &[
                "actix",
                "tokio",
                "std::net",
                "std::fs",
                "object_store",
                "Instant::now",
                "SystemTime",
                "crate::coord",
                "crate::transport",
                "crate::wire",
                "crate::store",
                "crate::actors",
                "crate::metrics",
            ],
        },
        Rule {
            says: "wire/ knows frames, not who sends them",
            allowed: |p| !p.starts_with("wire/"),
            needles: &["crate::actors", "crate::coord", "crate::transport", "crate::client", "crate::node"],
        },
        Rule {
            says: "the client sits beside the actors, not above them",
            allowed: |p| p != "client.rs",
            needles: &["crate::actors", "crate::node", "crate::cli"],
        },
        Rule {
            says: "node.rs does not import the command line (cli runs nodes, not the reverse)",
            allowed: |p| p != "node.rs" && p != "cli_job.rs",
            needles: &["crate::cli::", "crate::cli;"],
        },
        Rule {
            says: "a session knows no master's store (the store is built on the session, not the reverse)",
            allowed: |p| p != "coord/session.rs",
            needles: &["super::store", "LeaderStore", "crate::store"],
        },
        Rule {
            says: "every queue is bounded and says what happens when it is full (the test harness aside)",
            allowed: |p| p.starts_with("testkit/"),
            needles: &["unbounded_channel", "crossbeam_channel::unbounded", "std::sync::mpsc::channel("],
        },
        Rule {
            says: "metric names are written once, in metrics.rs",
            // lib.rs names the crate `ringleader_core`, no metric.
            allowed: |p| p == "metrics.rs" || p.starts_with("testkit/") || p == "lib.rs",
            needles: &["ringleader_"],
        },
        Rule {
            says: "only the node's gateway and the transport read frames off streams (and the fuzz targets, off bytes)",
            allowed: |p| {
                p.starts_with("transport/")
                    || p.starts_with("wire/")
                    || p == "actors/gateway.rs"
                    || p == "actors/worker.rs"
                    || p == "fuzz.rs"
            },
            needles: &["read_frame("],
        },
    ]
}

#[test]
fn every_module_stays_in_its_room() {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    // The framework's files by their path under `src/`; the core crate's
    // as `core/...`, the room they were.
    let mut files: Vec<(PathBuf, String)> = Vec::new();
    for (root, prefix) in [
        (manifest.join("src"), ""),
        (manifest.join("core/src"), "core/"),
    ] {
        let mut found = Vec::new();
        sources(&root, &mut found);
        for file in found {
            let rel = file
                .strip_prefix(&root)
                .expect("under its root")
                .to_string_lossy()
                .replace('\\', "/");
            files.push((file, format!("{prefix}{rel}")));
        }
    }
    assert!(files.len() > 30, "found only {} source files", files.len());
    assert!(
        files.iter().any(|(_, rel)| rel == "core/master.rs"),
        "the core crate's files are checked"
    );
    let rules = rules();
    let mut broken = Vec::new();
    let mut checked = 0;
    for (file, rel) in &files {
        let rel = rel.as_str();
        let text = std::fs::read_to_string(file).expect("readable");
        for rule in &rules {
            if (rule.allowed)(rel) {
                continue;
            }
            checked += 1;
            for (n, line) in code(&text) {
                for needle in rule.needles {
                    if line.contains(needle) {
                        broken.push(format!("{rel}:{n}: {needle:?}: {}", rule.says));
                    }
                }
            }
        }
    }
    assert!(checked > 100, "only {checked} file-rule pairs checked");
    assert!(
        broken.is_empty(),
        "boundaries crossed:\n{}",
        broken.join("\n")
    );
}

/// The checker itself: a line that crosses a boundary is caught, one in a
/// comment, a string or a test module is not.
#[test]
fn the_checker_sees_code_and_skips_comments_strings_and_tests() {
    let text = "use quinn::Endpoint;\n// quinn:: in a comment\nlet f = \"quinn::x\";\n#[cfg(test)]\nuse quinn::Y;\n";
    let lines = code(text);
    let hits: Vec<usize> = lines
        .iter()
        .filter(|(_, l)| l.contains("quinn::"))
        .map(|(n, _)| *n)
        .collect();
    assert_eq!(hits, vec![1]);
    let tests_only = "//! Tests.\n#![cfg(test)]\nuse quinn::Y;\n";
    assert!(code(tests_only).iter().all(|(_, l)| !l.contains("quinn::")));
    assert!(code(text).iter().any(|(_, l)| l.contains("quinn::")));
}

/// The core crate's wall is its manifest: it names no runtime, actor
/// system, socket, ZooKeeper, QUIC, TLS, store, byte-format or encoding
/// crate (its values are encoded by `wire::core_serde`).
#[test]
fn the_core_crate_depends_on_no_runtime_and_no_io() {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("core/Cargo.toml");
    let text = std::fs::read_to_string(&manifest).expect("core/Cargo.toml");
    let deps: Vec<&str> = text
        .split("[dependencies]")
        .nth(1)
        .expect("a [dependencies] table")
        .split("\n[")
        .next()
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(['=', '.']).next())
        .map(str::trim)
        .filter(|name| !name.is_empty() && !name.starts_with('#'))
        .collect();
    assert_eq!(deps, ["thiserror"], "{}", manifest.display());
    for crate_name in [
        "tokio",
        "actix",
        "quinn",
        "zookeeper",
        "rustls",
        "object_store",
        "rmp",
        "serde",
    ] {
        assert!(
            !text.contains(crate_name),
            "core names {crate_name}: {}",
            manifest.display()
        );
    }
}
