//! `edge-agent plugin ...` as a plugin author runs it: the real binary, real components.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

fn wasm(name: &str) -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| er_plugin_host::build::build_examples().expect("build example plugins"))
        .join(format!("{name}.wasm"))
}

fn agent(args: &[&str], plugins: &[PathBuf]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_edge-agent"));
    cmd.args(["plugin", "test"]);
    for p in plugins {
        cmd.arg("--plugin").arg(p);
    }
    cmd.args(args).output().expect("run edge-agent")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Writes JSON-lines records to a file in `dir`.
fn input(dir: &Path, lines: &[&str]) -> String {
    let path = dir.join("in.jsonl");
    std::fs::write(&path, lines.join("\n")).unwrap();
    path.display().to_string()
}

#[test]
fn policy_accepts_every_documented_form_and_lists_them_when_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let file = input(
        dir.path(),
        &[r#"{"value":"good"}"#, r#"{"value":"bad","offset":9}"#],
    );
    let hostile = wasm("fixture_hostile");
    for (policy, failed_line) in [
        ("dead-letter", r#""outcome":"dead-letter""#),
        ("dead-letter:errors", r#""outcome":"dead-letter""#),
        ("skip", r#""outcome":"failed""#),
    ] {
        let out = agent(
            &[
                "--set",
                "mode=panic",
                "--set",
                "trigger=bad",
                "--policy",
                policy,
                "--input",
                &file,
            ],
            std::slice::from_ref(&hostile),
        );
        let stdout = text(&out.stdout);
        assert!(out.status.success(), "{policy}: {}", text(&out.stderr));
        let lines: Vec<&str> = stdout.lines().collect();
        assert!(
            lines[0].contains(r#""outcome":"kept""#),
            "{policy}: {stdout}"
        );
        assert!(lines[1].contains(failed_line), "{policy}: {stdout}");
        if let Some(topic) = policy.strip_prefix("dead-letter") {
            let topic = topic.strip_prefix(':').unwrap_or("dead-letter");
            assert!(
                lines[1].contains(&format!(r#""topic":"{topic}""#)),
                "{policy}: {stdout}"
            );
        }
    }

    let out = agent(&["--policy", "deadletter", "--input", &file], &[hostile]);
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(r#""deadletter" is not a policy; expected stop, skip, dead-letter or dead-letter:<topic>"#),
        "{stderr}"
    );
}

#[test]
fn a_stop_names_the_plugin_line_and_source_record_once() {
    let dir = tempfile::tempdir().unwrap();
    let file = input(
        dir.path(),
        &[
            r#"{"topic":"sensors","partition":2,"offset":40,"value":"ok"}"#,
            r#"{"topic":"sensors","partition":2,"offset":41,"value":"bad"}"#,
        ],
    );
    let out = agent(
        &[
            "--set",
            "mode=flood",
            "--set",
            "trigger=bad",
            "--input",
            &file,
        ],
        &[wasm("fixture_hostile")],
    );
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    let error = stderr
        .lines()
        .find(|l| l.starts_with("edge-agent: "))
        .unwrap_or_else(|| panic!("no error line: {stderr}"));
    assert!(
        error.starts_with("edge-agent: input line 2: plugin ")
            && error.contains("fixture_hostile.wasm")
            && error.ends_with(r#"(record at topic "sensors" partition 2 offset 41)"#),
        "{error}"
    );
    assert_eq!(error.matches("produced 1000 records").count(), 1, "{error}");
    // The stats still say what ran, readably.
    assert!(
        stderr.contains("plugin fixture_hostile.wasm: 2 in, 1 out, 0 dropped, 1 error; 1 call"),
        "{stderr}"
    );
}

#[test]
fn the_summary_prints_readable_stats() {
    let dir = tempfile::tempdir().unwrap();
    let file = input(
        dir.path(),
        &[
            r#"{"value":{"json":{"temperature":31}}}"#,
            r#"{"value":{"json":{"temperature":12}}}"#,
        ],
    );
    let out = agent(
        &["--set", "condition=temperature > 30", "--input", &file],
        &[wasm("filter")],
    );
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("2 records in, 1 out, 1 dropped, 0 failed"),
        "{stderr}"
    );
    assert!(
        stderr.contains("plugin filter.wasm: 2 in, 1 out, 1 dropped, 0 errors; 1 call, "),
        "{stderr}"
    );
    assert!(!stderr.contains("PluginStats"), "{stderr}");
}

/// Whether rustc has the standard library for wasm32-wasip2.
fn wasm_target_installed(cargo: &str) -> bool {
    let rustc = Path::new(cargo).with_file_name("rustc");
    let rustc = if rustc.exists() {
        rustc
    } else {
        "rustc".into()
    };
    Command::new(rustc)
        .args(["--print", "target-libdir", "--target", "wasm32-wasip2"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .is_some_and(|o| Path::new(text(&o.stdout).trim()).is_dir())
}

#[test]
fn plugin_new_writes_a_crate_that_builds_and_runs() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    if !wasm_target_installed(&cargo) {
        eprintln!(
            "skipped: the wasm32-wasip2 target is not installed (rustup target add wasm32-wasip2)"
        );
        return;
    }
    // Outside the repository, as a plugin author would have it.
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_edge-agent"))
        .args(["plugin", "new", "keep-hot", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let root = dir.path().join("keep-hot");
    assert!(text(&out.stdout).contains("cargo build --release --target wasm32-wasip2"));

    // Writing it again over itself is refused.
    let again = Command::new(env!("CARGO_BIN_EXE_edge-agent"))
        .args(["plugin", "new", "keep-hot", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(
        text(&again.stderr).contains("already exists"),
        "{}",
        text(&again.stderr)
    );

    // Dependencies are kept between runs (beside the example plugins' build), the crate itself
    // is built afresh.
    let target = er_plugin_host::build::examples_dir().join("target/plugin-new-test");
    let build = Command::new(&cargo)
        .current_dir(&root)
        .args(["build", "--target", "wasm32-wasip2", "--target-dir"])
        .arg(&target)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET")
        .output()
        .unwrap();
    assert!(build.status.success(), "{}", text(&build.stderr));
    let component = target.join("wasm32-wasip2/debug/keep_hot.wasm");

    let records = root.join("records.jsonl").display().to_string();
    let out = agent(
        &["--set", "limit=30", "--policy", "skip", "--input", &records],
        &[component],
    );
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{stdout}");
    assert!(
        lines[0].contains(r#""outcome":"changed""#) && lines[0].contains(r#"["alert","hot"]"#),
        "{stdout}"
    );
    assert!(lines[1].contains(r#""outcome":"dropped""#), "{stdout}");
    assert!(
        lines[2].contains(r#""outcome":"kept""#) && lines[2].contains(r#""value":null"#),
        "the tombstone passes: {stdout}"
    );
    assert!(
        lines[3].contains(r#""outcome":"failed""#) && lines[3].contains("not the expected JSON"),
        "{stdout}"
    );
}
