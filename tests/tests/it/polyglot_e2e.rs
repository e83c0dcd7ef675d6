//! Python and JavaScript plugins (plugins/python, plugins/js): the same filter and transform as
//! the Rust examples, in the real sandbox (`edge-agent plugin test`) and end to end on real
//! Apache Kafka (edge broker -> edge-agent -> QUIC/mTLS -> hub -> central broker).
//!
//! The plugins are built by their languages' build scripts, which install pinned tools on first
//! use. A test skips (saying why) only when this machine has no python3 or node/npm to install
//! them with; a failing install or build fails the test.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use er_plugin_host::build::{BuildError, Language, build_language_examples};
use er_plugin_host::{ErrorPolicy, HostConfig, PluginHost, PluginSpec};
use er_tests::client::{self, NewRecord, Record};
use er_tests::kafka::shared;
use er_tests::replicator::{bin, example_plugin};
use er_tests::rig::Rig;
use er_tests::unique_name;

use crate::plugins_e2e::read;
use serde_json::Value;

/// The directory of `language`'s built plugins, or `None` after printing why this machine
/// cannot install the language's tools. Any other build failure panics.
fn built(language: Language) -> Option<&'static Path> {
    static PYTHON: OnceLock<Option<PathBuf>> = OnceLock::new();
    static JS: OnceLock<Option<PathBuf>> = OnceLock::new();
    let cell = match language {
        Language::Python => &PYTHON,
        Language::JavaScript => &JS,
    };
    cell.get_or_init(|| match build_language_examples(language) {
        Ok(dir) => Some(dir),
        Err(e @ BuildError::ToolchainMissing { .. }) => {
            eprintln!("SKIPPED ({language} plugins): {e}");
            None
        }
        Err(e) => panic!("{e}"),
    })
    .as_deref()
}

/// `name.wasm` of every language: Rust first, then those this machine can build.
fn every_language(name: &str) -> Vec<(String, PathBuf)> {
    let mut out = vec![("Rust".to_owned(), example_plugin(name))];
    for language in Language::ALL {
        if let Some(dir) = built(language) {
            out.push((language.to_string(), dir.join(format!("{name}.wasm"))));
        }
    }
    out
}

/// The sample records every language's examples run on.
fn readings() -> PathBuf {
    er_plugin_host::build::examples_dir().join("fixtures/records/readings.jsonl")
}

/// Runs `edge-agent plugin test` with one plugin and its settings; returns the outcome lines
/// and stderr (and panics with stderr if the command failed).
fn plugin_test(plugin: &Path, settings: &[(&str, &str)], input: &Path) -> (Vec<Value>, String) {
    let mut cmd = std::process::Command::new(bin("edge-agent").expect("edge-agent binary"));
    cmd.args(["plugin", "test", "--policy", "skip", "--plugin"])
        .arg(plugin);
    for (k, v) in settings {
        cmd.args(["--set", &format!("{k}={v}")]);
    }
    let out = cmd
        .arg("--input")
        .arg(input)
        .output()
        .expect("run edge-agent");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "{} {settings:?}: {stderr}",
        plugin.display()
    );
    let lines = String::from_utf8(out.stdout)
        .expect("UTF-8 output")
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    (lines, stderr)
}

/// wasmtime's compiled-code cache for these tests, kept across runs: compiling a 12-19 MB
/// interpreter component takes 10-20 CPU seconds here, loading it from the cache milliseconds.
fn code_cache() -> PathBuf {
    let home = std::env::var_os("HOME").map_or_else(std::env::temp_dir, PathBuf::from);
    std::env::var_os("ER_CACHE_DIR")
        .map_or_else(|| home.join(".cache/edge-replicator"), PathBuf::from)
        .join("plugin-code")
}

/// One host for the in-process runs, so each component is compiled once per run.
fn host() -> &'static PluginHost {
    static HOST: OnceLock<PluginHost> = OnceLock::new();
    HOST.get_or_init(|| {
        PluginHost::new(HostConfig {
            // Generous: a loaded CI machine must not trip it on a dozen records.
            batch_deadline: Duration::from_secs(5),
            cache_dir: Some(code_cache()),
            ..HostConfig::default()
        })
        .expect("plugin host")
    })
}

/// What `edge-agent plugin test --policy skip` prints for one plugin on the sample records, as
/// JSON lines, from the library code behind that command.
fn run_samples(plugin: &Path, settings: &[(&str, &str)]) -> Vec<Value> {
    run_jsonl(plugin, settings, &readings())
}

/// [`run_samples`] on any input file.
fn run_jsonl(plugin: &Path, settings: &[(&str, &str)], input: &Path) -> Vec<Value> {
    let spec = PluginSpec {
        path: plugin.to_owned(),
        config: settings
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    };
    let mut chain = host()
        .load_chain(&[spec], ErrorPolicy::Skip)
        .unwrap_or_else(|e| panic!("{e}"));
    let input = std::io::BufReader::new(std::fs::File::open(input).expect("input records"));
    let mut out = Vec::new();
    er_plugin_host::run_jsonl(&mut chain, input, &mut out, 100)
        .unwrap_or_else(|e| panic!("{} {settings:?}: {e}", plugin.display()));
    String::from_utf8(out)
        .expect("UTF-8 output")
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

/// Only the parser's own words differ by language ("value is not JSON: <parser's words>"), and
/// the plugin's path: both are cut; everything else must be equal.
fn normalized(mut lines: Vec<Value>) -> Vec<Value> {
    const NOT_JSON: &str = "value is not JSON";
    for line in &mut lines {
        if let Some(Value::String(e)) = line.get_mut("error")
            && let Some(at) = e.find(NOT_JSON)
        {
            e.truncate(at + NOT_JSON.len());
        }
        if let Some(Value::String(p)) = line.get_mut("plugin") {
            *p = Path::new(p.as_str())
                .file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        }
    }
    lines
}

/// The source offsets of the lines with `outcome`.
fn offsets(lines: &[Value], outcome: &str) -> Vec<i64> {
    lines
        .iter()
        .filter(|l| l["outcome"] == outcome)
        .map(|l| l["source"]["offset"].as_i64().expect("offset"))
        .collect()
}

/// The line of source offset `offset`.
fn line_of(lines: &[Value], offset: i64) -> &Value {
    lines
        .iter()
        .find(|l| l["source"]["offset"] == offset)
        .unwrap_or_else(|| panic!("no line for offset {offset}: {lines:?}"))
}

type Settings = &'static [(&'static str, &'static str)];

#[test]
fn python_and_js_examples_give_the_rust_examples_outcomes_on_sample_records() {
    let filters: &[(Settings, &[i64])] = &[
        (&[("condition", "temperature > 30")], &[0, 3, 4, 9]),
        (&[("condition", "temperature >= 30")], &[0, 2, 3, 4, 9]),
        // The last header of a name counts (offset 8 has site=berlin, then site=paris).
        (&[("condition", "header:site == paris")], &[1, 8]),
        (&[("condition", "header:temp > 30")], &[0, 6]),
        (
            &[
                ("condition", "temperature >= 30"),
                ("condition", "sensor != s-3"),
            ],
            &[0, 2, 4, 9],
        ),
        (&[("condition", r#"meta.kind == "thermo""#)], &[8]),
        (&[("condition", "meta.tags.1 == b")], &[8]),
        (&[("condition", "key == k1")], &[1]),
        (&[("condition", "ok == true")], &[9]),
        (
            &[("condition", "temperature < 0"), ("on_missing", "keep")],
            &[5, 6, 7, 8, 10, 11],
        ),
    ];
    let plugins = every_language("filter");
    for (settings, kept) in filters {
        let rust = run_samples(&plugins[0].1, settings);
        assert_eq!(offsets(&rust, "kept"), *kept, "Rust filter {settings:?}");
        for (language, plugin) in &plugins[1..] {
            let got = run_samples(plugin, settings);
            assert_eq!(
                normalized(got),
                normalized(rust.clone()),
                "{language} filter {settings:?} against Rust"
            );
        }
    }

    let edits: Settings = &[
        ("drop", "debug, temp_raw"),
        ("redact", "user.email, meta.tags.0"),
        ("rename.temperature", "temp_c"),
        ("site", "edge-1"),
    ];
    let transforms: &[(Settings, &str)] = &[
        (&[], "fail"),
        (&[("on_invalid", "drop")], "drop"),
        (&[("on_invalid", "keep")], "keep"),
    ];
    let plugins = every_language("transform");
    for (extra, on_invalid) in transforms {
        let settings: Vec<(&str, &str)> = edits.iter().chain(*extra).copied().collect();
        let rust = run_samples(&plugins[0].1, &settings);
        let not_json = [6, 10];
        match *on_invalid {
            "fail" => assert_eq!(offsets(&rust, "failed"), not_json, "{rust:?}"),
            "drop" => assert_eq!(offsets(&rust, "dropped"), not_json, "{rust:?}"),
            _ => assert!(offsets(&rust, "changed").contains(&6), "{rust:?}"),
        }
        // The edited reading, byte for byte: keys sorted, as serde_json writes them.
        let third = line_of(&rust, 3);
        assert_eq!(
            third["value"],
            r#"{"sensor":"s-3","seq":3,"temp_c":30.5,"user":{"email":"***","name":"Zoë"}}"#
        );
        assert_eq!(third["headers"], serde_json::json!([["site", "edge-1"]]));
        // Two `site` headers in, one out; a tombstone keeps its null value and gets the header.
        assert_eq!(
            line_of(&rust, 8)["headers"],
            serde_json::json!([["site", "edge-1"]])
        );
        assert_eq!(line_of(&rust, 5)["value"], Value::Null);
        for (language, plugin) in &plugins[1..] {
            let got = run_samples(plugin, &settings);
            assert_eq!(
                normalized(got),
                normalized(rust.clone()),
                "{language} transform {settings:?} against Rust"
            );
        }
    }
}

/// The real CLI with each language's filter (compiling in the CLI, so only one run each), then
/// what each language's runtime can reach from inside the sandbox (files, sockets, environment, clocks), and that a JavaScript `fetch`
/// (present in StarlingMonkey, its wasi:http imports stubbed out at build time) traps and is
/// contained.
#[test]
fn python_and_js_plugins_run_in_plugin_test_and_reach_nothing_outside() {
    let dir = tempfile::tempdir().unwrap();
    let one = dir.path().join("one.jsonl");
    std::fs::write(&one, "{\"value\":\"x\"}\n").unwrap();
    let expected: [(Language, &[&str]); 2] = [
        (
            Language::Python,
            &[
                "file=denied",
                "dir=denied",
                "create=denied",
                // CPython for WASI has no socket module.
                "tcp=denied: ModuleNotFoundError",
                "env=0",
                "clock=0",
            ],
        ),
        (
            Language::JavaScript,
            &[
                "fetch=function",
                "require=undefined",
                "process=undefined",
                "clock=0",
                "perf=0",
            ],
        ),
    ];
    for (language, wants) in expected {
        let Some(built) = built(language) else {
            continue;
        };
        let (lines, stderr) = plugin_test(
            &built.join("filter.wasm"),
            &[("condition", "temperature > 30")],
            &readings(),
        );
        assert_eq!(
            offsets(&lines, "kept"),
            [0, 3, 4, 9],
            "{language}: {stderr}"
        );
        assert!(
            stderr.contains("12 records in, 4 out, 8 dropped, 0 failed")
                && stderr.contains("MiB memory"),
            "{language}: {stderr}"
        );

        let lines = run_jsonl(&built.join("escape.wasm"), &[], &one);
        let report = lines[0]["value"].as_str().expect("a report");
        for want in wants {
            assert!(report.contains(want), "{language}: {want} in {report}");
        }
    }
    if let Some(js) = built(Language::JavaScript) {
        let lines = run_jsonl(&js.join("escape.wasm"), &[("mode", "fetch")], &one);
        assert_eq!(lines[0]["outcome"], "failed", "{lines:?}");
        assert!(
            lines[0]["error"]
                .as_str()
                .is_some_and(|e| e.starts_with("trapped")),
            "{lines:?}"
        );
    }
}

/// One `[[routes]]` table.
fn route(name: &str, topic: &str, plugins: &[(PathBuf, String)]) -> String {
    let mut s = format!(
        "\n[[routes]]\nname = {name:?}\ntopics = [{:?}]\non_error = \"stop\"\n",
        topic.replace('.', "\\.")
    );
    for (path, config) in plugins {
        s.push_str(&format!(
            "[[routes.plugins]]\npath = {:?}\nconfig = {{ {config} }}\n",
            path.display().to_string()
        ));
    }
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn python_and_js_plugins_filter_and_transform_end_to_end() -> anyhow::Result<()> {
    let languages: Vec<(Language, &Path)> = Language::ALL
        .into_iter()
        .filter_map(|l| built(l).map(|d| (l, d)))
        .collect();
    if languages.is_empty() {
        return Ok(());
    }
    let k = shared();
    let prefix = unique_name("poly");
    let site = unique_name("site");
    const TOTAL: usize = 3_000;
    const PARTITIONS: i32 = 2;
    let base_ts = client::now_ms() - 600_000;
    // About a third are hot; every 50th value is not JSON and every 70th is a tombstone: the
    // filter drops both (their temperature is missing), so nothing fails the stopping route.
    let temperature = |i: usize| (i * 37 % 45) as u32;
    let hot = |i: usize| i % 50 != 7 && i % 70 != 9 && temperature(i) > 30;
    let recs: Vec<NewRecord> = (0..TOTAL)
        .map(|i| {
            let value = if i % 50 == 7 {
                Some(format!("not json {i}").into_bytes())
            } else if i % 70 == 9 {
                None
            } else {
                Some(
                    format!(
                        r#"{{"seq":{i},"temperature":{},"sensor":"s-{}","user":{{"name":"n{}","email":"u{i}@example.com"}},"debug":{{"t":{i}}}}}"#,
                        temperature(i),
                        i % 17,
                        i % 5,
                    )
                    .into_bytes(),
                )
            };
            NewRecord {
                key: Some(format!("k{i}").into_bytes()),
                value,
                headers: vec![("src".into(), Some(b"edge".to_vec()))],
                timestamp: Some(base_ts + i as i64),
                partition: Some((i % PARTITIONS as usize) as i32),
            }
        })
        .collect();
    let filter = r#"condition = ["temperature > 30"]"#.to_owned();
    let transform = concat!(
        r#"drop = "debug", redact = "user.email", "#,
        r#""rename.temperature" = "temp_c", site = "edge-1""#
    )
    .to_owned();

    let mut rig = Rig::builder().site(&site).start()?;
    let mut agent_setup = rig.agent_setup(&site, &format!("{prefix}-.*"));
    // A deadline well above the interpreters' cost of a batch (a few ms, see BENCHMARKS.md),
    // so a loaded CI machine does not stop the route.
    agent_setup.extra.push_str(&format!(
        "\n[plugins]\nbatch_deadline_ms = 2000\ncache_dir = {:?}\n",
        code_cache().display().to_string()
    ));
    let mut topics = Vec::new();
    for (language, dir) in &languages {
        let topic = format!("{prefix}-{}", language.to_string().to_lowercase());
        client::create_topic(k.edge(), &topic, PARTITIONS, &[]).await?;
        agent_setup.extra.push_str(&route(
            &topic,
            &topic,
            &[
                (dir.join("filter.wasm"), filter.clone()),
                (dir.join("transform.wasm"), transform.clone()),
            ],
        ));
        topics.push((*language, topic));
    }
    let producer = client::producer(k.edge(), &[])?;
    for (_, topic) in &topics {
        client::send_all(&producer, topic, &recs).await?;
    }
    rig.start_agent(&agent_setup)?;

    // What the Rust examples write: the kept readings, edited, keys sorted, the site header
    // added after the input's headers; key, timestamp and partition unchanged.
    let mut want: BTreeMap<i32, Vec<(String, String, i64)>> = BTreeMap::new();
    for i in (0..TOTAL).filter(|&i| hot(i)) {
        want.entry((i % PARTITIONS as usize) as i32).or_default().push((
            format!("k{i}"),
            format!(
                r#"{{"sensor":"s-{}","seq":{i},"temp_c":{},"user":{{"email":"***","name":"n{}"}}}}"#,
                i % 17,
                temperature(i),
                i % 5
            ),
            base_ts + i as i64,
        ));
    }
    let kept: usize = want.values().map(Vec::len).sum();
    let headers = vec![
        ("src".to_owned(), Some(b"edge".to_vec())),
        ("site".to_owned(), Some(b"edge-1".to_vec())),
    ];
    for (language, topic) in &topics {
        let remote = format!("{site}.{topic}");
        let got = read(k.central(), &remote, kept, &rig.procs()).await;
        assert_eq!(got.len(), kept, "{language}: kept records\n{}", rig.logs());
        for (p, want) in &want {
            let have: Vec<&Record> = got.iter().filter(|r| r.partition == *p).collect();
            assert_eq!(have.len(), want.len(), "{language}: partition {p}");
            for (h, (key, value, ts)) in have.iter().zip(want) {
                assert_eq!(h.key.as_deref(), Some(key.as_bytes()), "{language}: order");
                assert_eq!(
                    String::from_utf8_lossy(h.value.as_deref().unwrap_or_default()),
                    *value,
                    "{language}: the edited value"
                );
                assert_eq!(h.headers, headers, "{language}: headers");
                assert_eq!(h.timestamp_ms(), Some(*ts), "{language}: timestamp");
            }
        }
    }
    // Nothing else arrives later (the dropped tail moves the position without output).
    tokio::time::sleep(Duration::from_secs(3)).await;
    for (language, topic) in &topics {
        let again = client::consume_to_end(
            k.central(),
            &format!("{site}.{topic}"),
            Duration::from_secs(30),
        )
        .await?;
        assert_eq!(again.len(), kept, "{language}: no duplicates appear later");
    }
    assert!(rig.agent_mut(&site).is_running(), "the agent still runs");
    Ok(())
}
