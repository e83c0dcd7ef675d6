//! Developer tasks. Run as `cargo xtask <command>`.
//!
//! ```text
//! cargo xtask kafka fetch                 resolve the Kafka jars into the cache (Maven)
//! cargo xtask kafka up [--with-central2]  start edge + central (+ central2) brokers, detached
//! cargo xtask kafka status                show the brokers recorded in the state file
//! cargo xtask kafka down                  stop them, remove their dirs and the state file
//! ```
//!
//! `up` prints `export ER_EDGE_BOOTSTRAP=...` lines on stdout (eval them: `eval "$(cargo xtask
//! kafka up)"`) and a human summary on stderr. Tests then attach to these brokers instead of
//! starting their own.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use er_tests::kafka::{self, DetachedNode, KafkaNode, NodeOptions};
use serde::{Deserialize, Serialize};

#[cfg(test)]
mod tidy;

const USAGE: &str = "usage: cargo xtask kafka <fetch | up [--with-central2] | status | down>";

/// `${ER_CACHE_DIR:-~/.cache/edge-replicator}/kafka-up.json`.
#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    kafka_version: String,
    nodes: Vec<DetachedNode>,
}

fn state_path() -> PathBuf {
    kafka::cache_dir().join("kafka-up.json")
}

fn load_state() -> Result<Option<State>> {
    let path = state_path();
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(Some(
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?,
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

fn save_state(state: &State) -> Result<()> {
    let path = state_path();
    std::fs::create_dir_all(path.parent().expect("state file has a parent"))?;
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_string_pretty(state)?)?;
    std::fs::rename(&tmp, &path)?;
    Ok(())
}

fn env_var_for(name: &str) -> String {
    format!("ER_{}_BOOTSTRAP", name.to_uppercase())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["kafka", "fetch"] => fetch(),
        ["kafka", "up"] => up(false),
        ["kafka", "up", "--with-central2"] => up(true),
        ["kafka", "status"] => status(),
        ["kafka", "down"] => down(),
        ["help" | "--help" | "-h"] | [] => {
            println!("{USAGE}");
            Ok(())
        }
        _ => bail!("{USAGE}"),
    }
}

fn fetch() -> Result<()> {
    let started = Instant::now();
    let libs = kafka::ensure_libs()?;
    let jars = std::fs::read_dir(&libs)?
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".jar"))
        })
        .count();
    eprintln!(
        "Apache Kafka {}: {jars} jars in {} ({:.1?})",
        kafka::kafka_version(),
        libs.display(),
        started.elapsed()
    );
    Ok(())
}

fn up(with_central2: bool) -> Result<()> {
    let mut state = load_state()?.unwrap_or_default();
    if state.nodes.iter().any(|n| !n.is_alive()) {
        bail!(
            "{} lists brokers that are no longer running; run `cargo xtask kafka down` first",
            state_path().display()
        );
    }
    state.kafka_version = kafka::kafka_version().to_string();
    let mut wanted = vec!["edge", "central"];
    if with_central2 {
        wanted.push("central2");
    }
    let missing: Vec<&str> = wanted
        .iter()
        .copied()
        .filter(|w| !state.nodes.iter().any(|n| n.name == *w))
        .collect();
    kafka::ensure_libs()?;
    let started = Instant::now();
    let results: Vec<(&str, Result<DetachedNode>)> = std::thread::scope(|s| {
        let handles: Vec<_> = missing
            .iter()
            .map(|&name| {
                (
                    name,
                    s.spawn(move || {
                        KafkaNode::start_with(
                            name,
                            NodeOptions {
                                detached: true,
                                ..NodeOptions::default()
                            },
                        )
                        .and_then(KafkaNode::detach)
                    }),
                )
            })
            .collect();
        handles
            .into_iter()
            .map(|(n, h)| {
                (
                    n,
                    h.join()
                        .unwrap_or_else(|_| Err(anyhow::anyhow!("panicked"))),
                )
            })
            .collect()
    });
    let mut errors = Vec::new();
    for (name, r) in results {
        match r {
            Ok(node) => state.nodes.push(node),
            Err(e) => errors.push(format!("{name}: {e:#}")),
        }
    }
    state.nodes.sort_by_key(|n| {
        ["edge", "central", "central2"]
            .iter()
            .position(|w| *w == n.name)
            .unwrap_or(9)
    });
    save_state(&state)?;
    if !errors.is_empty() {
        bail!(
            "starting brokers failed (those that started are recorded; `cargo xtask kafka down` stops them):\n{}",
            errors.join("\n")
        );
    }
    for n in &state.nodes {
        println!("export {}={}", env_var_for(&n.name), n.bootstrap);
    }
    let summary: Vec<String> = state
        .nodes
        .iter()
        .map(|n| format!("{} {} (pid {})", n.name, n.bootstrap, n.pid))
        .collect();
    eprintln!(
        "Kafka {} up in {:.1?}: {}. State: {}. Use: eval \"$(cargo xtask kafka up)\"; stop: cargo xtask kafka down",
        state.kafka_version,
        started.elapsed(),
        summary.join(", "),
        state_path().display()
    );
    Ok(())
}

fn status() -> Result<()> {
    let Some(state) = load_state()? else {
        eprintln!("no brokers recorded ({} absent)", state_path().display());
        return Ok(());
    };
    println!("Kafka {} ({})", state.kafka_version, state_path().display());
    for n in &state.nodes {
        let health = match (n.is_alive(), n.is_serving()) {
            (true, true) => "running",
            (true, false) => "running, NOT accepting connections",
            (false, _) => "DEAD",
        };
        println!(
            "  {:<9} {:<16} pid {:<8} controller :{:<6} {health}  {}",
            n.name,
            n.bootstrap,
            n.pid,
            n.controller_port,
            n.dir.display()
        );
    }
    for n in &state.nodes {
        if n.is_alive() {
            println!("export {}={}", env_var_for(&n.name), n.bootstrap);
        }
    }
    Ok(())
}

fn down() -> Result<()> {
    let Some(state) = load_state()? else {
        eprintln!("nothing to stop ({} absent)", state_path().display());
        return Ok(());
    };
    std::thread::scope(|s| {
        for n in &state.nodes {
            s.spawn(move || n.stop_and_remove());
        }
    });
    std::fs::remove_file(state_path())?;
    for n in &state.nodes {
        eprintln!("stopped {} ({}, pid {})", n.name, n.bootstrap, n.pid);
    }
    Ok(())
}
