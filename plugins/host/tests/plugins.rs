//! The host against real components: the example plugins and the hostile fixtures, built for
//! wasm32-wasip2 by `er_plugin_host::build::build_examples` on first use.
//! They compile plugins, so they need the `compiler` feature (the default).
#![cfg(feature = "compiler")]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use er_plugin_host::{
    Chain, ChainError, ErrorPolicy, Failure, HostConfig, InRecord, OutRecord, OutputLimits,
    PluginError, PluginHost, PluginSpec,
};

fn wasm_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| er_plugin_host::build::build_examples().expect("build example plugins"))
}

fn wasm(name: &str) -> PathBuf {
    wasm_dir().join(format!("{name}.wasm"))
}

/// Generous enough that a loaded CI machine never trips it in a well-behaved plugin.
const DEADLINE_MS: u64 = 250;

fn config() -> HostConfig {
    HostConfig {
        memory_limit_bytes: 32 << 20,
        batch_deadline: Duration::from_millis(DEADLINE_MS),
        max_outputs_per_input: 100,
        cache_dir: None,
        max_instances: 32,
        ..HostConfig::default()
    }
}

/// One host for most tests: compiled components are shared, as routes share them in the agent.
fn host() -> &'static PluginHost {
    static HOST: OnceLock<PluginHost> = OnceLock::new();
    HOST.get_or_init(|| PluginHost::new(config()).expect("host"))
}

fn spec(name: &str, config: &[(&str, &str)]) -> PluginSpec {
    PluginSpec {
        path: wasm(name),
        config: config
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect(),
    }
}

fn chain(specs: &[PluginSpec], policy: ErrorPolicy) -> Chain {
    host().load_chain(specs, policy).expect("load chain")
}

/// Owned input records, viewed as `InRecord`s by `with_input`.
struct Rec {
    topic: String,
    key: Option<Vec<u8>>,
    value: Vec<u8>,
    headers: Vec<(String, Option<Vec<u8>>)>,
}

fn rec(topic: &str, value: &str) -> Rec {
    Rec {
        topic: topic.into(),
        key: None,
        value: value.as_bytes().to_vec(),
        headers: vec![],
    }
}

type HeaderRefs<'a> = Vec<(&'a str, Option<&'a [u8]>)>;

fn process(chain: &mut Chain, recs: &[Rec]) -> Result<Vec<OutRecord>, ChainError> {
    let headers: Vec<HeaderRefs<'_>> = recs
        .iter()
        .map(|r| {
            r.headers
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_deref()))
                .collect()
        })
        .collect();
    let input: Vec<InRecord<'_>> = recs
        .iter()
        .zip(&headers)
        .enumerate()
        .map(|(i, (r, h))| InRecord {
            topic: &r.topic,
            partition: 3,
            offset: 1000 + i as i64,
            timestamp: 77,
            key: r.key.as_deref(),
            value: Some(&r.value),
            headers: h,
        })
        .collect();
    chain.process(&input)
}

fn sources(out: &[OutRecord]) -> Vec<u32> {
    out.iter().map(|o| o.source_index).collect()
}

fn value(o: &OutRecord) -> &str {
    std::str::from_utf8(o.value.as_deref().unwrap_or_default()).unwrap()
}

fn header<'a>(o: &'a OutRecord, name: &str) -> Option<&'a str> {
    o.headers
        .iter()
        .rev()
        .find(|(n, _)| n == name)
        .and_then(|(_, v)| v.as_deref())
        .map(|v| std::str::from_utf8(v).unwrap())
}

#[test]
fn filter_keeps_matching_records_unchanged_with_their_source() {
    let mut c = chain(
        &[spec("filter", &[("condition", "temperature > 30")])],
        ErrorPolicy::Stop,
    );
    let recs = [
        rec("s", r#"{"temperature":31}"#),
        rec("s", r#"{"temperature":30}"#),
        rec("s", "not json"),
        rec("s", r#"{"temperature":45.5}"#),
    ];
    let out = process(&mut c, &recs).unwrap();
    assert_eq!(sources(&out), [0, 3]);
    assert_eq!(out[0].topic, None, "kept records keep their topic");
    assert_eq!(out[0].partition, None);
    assert_eq!(out[0].timestamp, 77);
    assert_eq!(value(&out[1]), r#"{"temperature":45.5}"#);
}

#[test]
fn rename_changes_only_the_topic() {
    let mut c = chain(
        &[spec(
            "rename",
            &[("rule.1", r"sensors\.(\w+) => plant1.$1")],
        )],
        ErrorPolicy::Stop,
    );
    let mut r = rec("sensors.temp", "v1");
    r.key = Some(b"k".to_vec());
    r.headers = vec![("h".into(), Some(b"x".to_vec())), ("n".into(), None)];
    let out = process(&mut c, &[r, rec("other", "v2")]).unwrap();
    assert_eq!(out.len(), 2);
    assert_eq!(out[0].topic.as_deref(), Some("plant1.temp"));
    assert_eq!(out[0].key.as_deref(), Some(&b"k"[..]));
    assert_eq!(value(&out[0]), "v1");
    assert_eq!(
        out[0].headers,
        vec![("h".into(), Some(b"x".to_vec())), ("n".into(), None)]
    );
    assert_eq!(out[0].timestamp, 77);
    assert_eq!(out[1].topic, None);
}

#[test]
fn transform_edits_json_and_stamps_the_site() {
    let mut c = chain(
        &[spec(
            "transform",
            &[
                ("drop", "debug"),
                ("redact", "user"),
                ("rename.t", "temperature"),
                ("site", "berlin-01"),
            ],
        )],
        ErrorPolicy::Stop,
    );
    let out = process(&mut c, &[rec("s", r#"{"debug":1,"user":"bob","t":20}"#)]).unwrap();
    assert_eq!(value(&out[0]), r#"{"temperature":20,"user":"***"}"#);
    assert_eq!(header(&out[0], "site"), Some("berlin-01"));
    assert_eq!(out[0].topic, None);
}

#[test]
fn route_sends_records_by_json_field() {
    let mut c = chain(
        &[spec(
            "route",
            &[
                ("by", "json:kind"),
                ("route.temp", "temps"),
                ("default", "misc"),
            ],
        )],
        ErrorPolicy::Stop,
    );
    let out = process(
        &mut c,
        &[
            rec("s", r#"{"kind":"temp"}"#),
            rec("s", r#"{"kind":"hum"}"#),
        ],
    )
    .unwrap();
    let topics: Vec<_> = out.iter().map(|o| o.topic.as_deref()).collect();
    assert_eq!(topics, [Some("temps"), Some("misc")]);
}

#[test]
fn chain_applies_plugins_in_order() {
    let stamp = spec("transform", &[("site", "berlin")]);
    let keep_berlin = spec("filter", &[("condition", "header:site == berlin")]);
    let recs = [rec("s", "{}"), rec("s", "{}")];
    let mut stamp_then_filter = chain(&[stamp.clone(), keep_berlin.clone()], ErrorPolicy::Stop);
    let out = process(&mut stamp_then_filter, &recs).unwrap();
    assert_eq!(sources(&out), [0, 1]);
    assert_eq!(header(&out[1], "site"), Some("berlin"));
    let mut filter_then_stamp = chain(&[keep_berlin, stamp], ErrorPolicy::Stop);
    assert!(process(&mut filter_then_stamp, &recs).unwrap().is_empty());
}

fn hostile(mode: &str, policy: ErrorPolicy) -> Chain {
    chain(
        &[spec(
            "fixture_hostile",
            &[("mode", mode), ("trigger", "bad")],
        )],
        policy,
    )
}

fn three() -> [Rec; 3] {
    [rec("s", "good0"), rec("s", "bad"), rec("s", "good2")]
}

#[test]
fn infinite_loop_hits_the_deadline_and_each_policy_applies() {
    let mut stop = hostile("loop", ErrorPolicy::Stop);
    let err = process(&mut stop, &three()).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("fixture_hostile.wasm")
            && msg.contains(&format!("exceeded the {DEADLINE_MS} ms deadline"))
            && msg.contains(r#"(batch of 3 records from topic "s" partition 3 offset 1000)"#),
        "{msg}"
    );
    // The route lives on: a fresh instance serves the next batch.
    assert_eq!(
        sources(&process(&mut stop, &[rec("s", "ok")]).unwrap()),
        [0]
    );

    let mut skip = hostile("loop", ErrorPolicy::Skip);
    assert_eq!(sources(&process(&mut skip, &three()).unwrap()), [0, 2]);

    let mut dl = hostile(
        "loop",
        ErrorPolicy::DeadLetter {
            topic: "dlq".into(),
        },
    );
    let out = process(&mut dl, &three()).unwrap();
    assert_eq!(sources(&out), [0, 1, 2]);
    assert_eq!(out[1].topic.as_deref(), Some("dlq"));
    assert_eq!(value(&out[1]), "bad");
    assert!(header(&out[1], "er.error").unwrap().contains("deadline"));
    assert!(
        header(&out[1], "er.plugin")
            .unwrap()
            .ends_with("fixture_hostile.wasm")
    );
    assert_eq!(out[0].topic, None);
}

#[test]
fn memory_bomb_stops_at_the_cap() {
    let mut c = hostile("bomb", ErrorPolicy::Stop);
    match process(&mut c, &three()).unwrap_err() {
        ChainError::Plugin {
            failure: Failure::Memory { limit, .. },
            ..
        } => assert_eq!(limit, 32 << 20),
        other => panic!("{other}"),
    }
    let mut skip = hostile("bomb", ErrorPolicy::Skip);
    assert_eq!(sources(&process(&mut skip, &three()).unwrap()), [0, 2]);
}

#[test]
fn panic_traps_and_the_policy_applies_to_that_record_only() {
    let mut stop = hostile("panic", ErrorPolicy::Stop);
    let msg = process(&mut stop, &three()).unwrap_err().to_string();
    assert!(
        msg.contains("trapped") && msg.contains("fixture panics"),
        "{msg}"
    );

    let mut skip = hostile("panic", ErrorPolicy::Skip);
    let out = process(&mut skip, &three()).unwrap();
    assert_eq!(sources(&out), [0, 2]);
    let stats = &skip.stats()[0];
    assert!(stats.errors >= 1 && stats.restarts >= 1, "{stats:?}");

    let mut dl = hostile(
        "panic",
        ErrorPolicy::DeadLetter {
            topic: "dlq".into(),
        },
    );
    let out = process(&mut dl, &three()).unwrap();
    assert_eq!(out[1].topic.as_deref(), Some("dlq"));
    assert!(
        header(&out[1], "er.error")
            .unwrap()
            .contains("fixture panics")
    );
}

#[test]
fn output_bound_is_enforced_with_a_clear_error() {
    let mut c = hostile("flood", ErrorPolicy::Stop);
    let msg = process(&mut c, &three()).unwrap_err().to_string();
    assert!(
        msg.contains("produced 1000 records for one input record, more than the limit of 100")
            && msg.contains(r#"(record at topic "s" partition 3 offset 1001)"#),
        "{msg}"
    );
    let mut skip = hostile("flood", ErrorPolicy::Skip);
    assert_eq!(sources(&process(&mut skip, &three()).unwrap()), [0, 2]);
}

#[test]
fn files_sockets_env_and_clocks_are_denied() {
    let mut c = hostile("escape", ErrorPolicy::Stop);
    let out = process(&mut c, &[rec("s", "bad")]).unwrap();
    let report = value(&out[0]);
    for denied in [
        "file=denied",
        "dir=denied",
        "create=denied",
        "tcp=denied",
        "udp=denied",
    ] {
        assert!(report.contains(denied), "{denied} in {report}");
    }
    assert!(
        report.contains("env=0") && report.contains("clock=0"),
        "{report}"
    );
    assert!(!Path::new("/tmp/er-plugin-escape").exists());
}

#[test]
fn sleeping_traps_instead_of_blocking_the_host() {
    let mut c = hostile("sleep", ErrorPolicy::Stop);
    let started = std::time::Instant::now();
    let msg = process(&mut c, &[rec("s", "bad")]).unwrap_err().to_string();
    assert!(msg.contains("sleeping is not granted"), "{msg}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn load_errors_name_the_plugin_file() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.wasm");
    std::fs::write(&garbage, b"\0asm not really").unwrap();
    let missing = dir.path().join("missing.wasm");
    let cases: Vec<(PluginSpec, &str)> = vec![
        (
            spec("fixture_wrong_world", &[]),
            "fixture_wrong_world.wasm\": is not a component of world edge-replicator:plugin@0.1.0",
        ),
        (
            spec("fixture_wrong_version", &[]),
            "fixture_wrong_version.wasm\": is not a component of world edge-replicator:plugin@0.1.0",
        ),
        (
            PluginSpec {
                path: garbage,
                config: vec![],
            },
            "garbage.wasm\": not a valid WebAssembly component",
        ),
        (
            PluginSpec {
                path: missing,
                config: vec![],
            },
            "missing.wasm\": cannot read the file",
        ),
        (
            spec("filter", &[]),
            "filter.wasm\": init rejected config: missing required setting \"condition\"",
        ),
        (
            spec("filter", &[("condition", "t >> 3"), ("bogus", "1")]),
            "filter.wasm\": init rejected config: unknown setting \"bogus\"",
        ),
    ];
    for (spec, want) in cases {
        let err = host().load_chain(&[spec], ErrorPolicy::Stop).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with("plugin \"") && msg.contains(want),
            "{msg}\nwanted: {want}"
        );
    }
}

#[test]
fn init_rejection_is_its_own_error_kind() {
    let err = host()
        .load_chain(
            &[spec("fixture_hostile", &[("mode", "fail")])],
            ErrorPolicy::Stop,
        )
        .unwrap_err();
    assert!(
        matches!(err, PluginError::InitRejected { ref message, .. } if message.contains("refuses")),
        "{err}"
    );
}

#[test]
fn stats_count_records_and_plugin_counters() {
    let mut c = chain(
        &[spec("transform", &[("drop", "x"), ("on_invalid", "drop")])],
        ErrorPolicy::Stop,
    );
    process(
        &mut c,
        &[rec("s", r#"{"x":1}"#), rec("s", "nope"), rec("s", "nope")],
    )
    .unwrap();
    let s = &c.stats()[0];
    assert_eq!(
        (s.records_in, s.records_out, s.records_dropped, s.errors),
        (3, 1, 2, 0)
    );
    assert_eq!(s.calls, 1);
    assert!(s.time_ns > 0);
    assert_eq!(s.counters, vec![("invalid_json".to_owned(), 2)]);
    assert!(s.plugin.ends_with("transform.wasm"));
    // The instance's linear memory: at least a page, within the cap.
    assert!(
        (1 << 16..=config().memory_limit_bytes as u64).contains(&s.memory_bytes),
        "{}",
        s.memory_bytes
    );
    // What `edge-agent plugin test` prints: one readable line, no Debug dump.
    let line = s.to_string();
    assert!(
        line.starts_with("transform.wasm: 3 in, 1 out, 2 dropped, 0 errors; 1 call, ")
            && line.ends_with(" MiB memory; counters: invalid_json=2"),
        "{line}"
    );
}

#[test]
fn empty_chain_and_empty_batch_pass_through() {
    let mut c = chain(&[], ErrorPolicy::Stop);
    assert_eq!(sources(&process(&mut c, &three()).unwrap()), [0, 1, 2]);
    let mut f = chain(&[spec("identity", &[])], ErrorPolicy::Stop);
    assert!(process(&mut f, &[]).unwrap().is_empty());
}

fn replace_file(target: &Path, from: &Path) {
    // Atomic replace, as a deploy tool should do it.
    let tmp = target.with_extension("tmp");
    std::fs::copy(from, &tmp).unwrap();
    std::fs::rename(&tmp, target).unwrap();
}

#[test]
fn hot_reload_while_processing_loses_and_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("route-plugin.wasm");
    std::fs::copy(wasm("identity"), &path).unwrap();
    let spec = PluginSpec {
        path: path.clone(),
        config: vec![("condition".into(), "n < 5".into())],
    };
    let mut c = host().load_chain(&[spec], ErrorPolicy::Stop).unwrap();
    let batch: Vec<Rec> = (0..10)
        .map(|n| rec("s", &format!(r#"{{"n":{n}}}"#)))
        .collect();

    let writer = {
        let path = path.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(30));
            replace_file(&path, &wasm("filter"));
        })
    };
    let mut batches_before = 0;
    let mut batches_after = 0;
    let mut reloaded_at = None;
    for i in 0..10_000 {
        if c.reload_if_changed().unwrap() {
            reloaded_at = Some(i);
        }
        let out = process(&mut c, &batch).unwrap();
        // Every batch is processed entirely by one version: identity or filter, never a mix.
        if reloaded_at.is_none() {
            assert_eq!(sources(&out), (0..10).collect::<Vec<_>>());
            batches_before += 1;
        } else {
            assert_eq!(sources(&out), [0, 1, 2, 3, 4]);
            batches_after += 1;
            if batches_after == 20 {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    writer.join().unwrap();
    assert!(
        batches_before > 0 && batches_after == 20,
        "{batches_before} {batches_after}"
    );
    assert_eq!(c.stats()[0].reloads, 1);

    // A broken new file keeps the running version and reports once.
    std::fs::write(dir.path().join("broken.wasm"), b"garbage").unwrap();
    replace_file(&path, &dir.path().join("broken.wasm"));
    let err = c.reload_if_changed().unwrap_err();
    assert!(err.to_string().contains("route-plugin.wasm"), "{err}");
    assert!(!c.reload_if_changed().unwrap());
    assert_eq!(sources(&process(&mut c, &batch).unwrap()), [0, 1, 2, 3, 4]);
}

#[test]
fn compiled_code_cache_directory_is_used() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = HostConfig {
        cache_dir: Some(dir.path().to_path_buf()),
        ..config()
    };
    for _ in 0..2 {
        let host = PluginHost::new(cfg.clone()).unwrap();
        let mut c = host
            .load_chain(&[spec("identity", &[])], ErrorPolicy::Stop)
            .unwrap();
        assert_eq!(process(&mut c, &three()).unwrap().len(), 3);
    }
    let entries = walk(dir.path());
    assert!(entries > 0, "cache directory stays empty");
}

/// wasmtime loads native code from the cache: a directory others may write is refused naming
/// the setting; a missing one is created for its owner only.
#[cfg(unix)]
#[test]
fn a_cache_directory_others_may_write_is_refused_and_a_missing_one_made_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
    let with = |path: &Path| HostConfig {
        cache_dir: Some(path.to_path_buf()),
        ..config()
    };
    let Err(err) = PluginHost::new(with(&shared)) else {
        panic!("a cache others may write was accepted")
    };
    let text = err.to_string();
    assert!(
        text.contains("plugins.cache_dir") && text.contains("shared") && text.contains("0777"),
        "{text}"
    );
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o755)).unwrap();
    PluginHost::new(with(&shared)).expect("owner-writable only is fine");

    let fresh = dir.path().join("new/cache");
    PluginHost::new(with(&fresh)).expect("created");
    let mode = std::fs::metadata(&fresh).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "{mode:o}");

    let file = dir.path().join("file");
    std::fs::write(&file, "").unwrap();
    let Err(err) = PluginHost::new(with(&file)) else {
        panic!("a file was accepted as the cache")
    };
    assert!(err.to_string().contains("not a directory"), "{err}");
}

fn walk(p: &Path) -> usize {
    std::fs::read_dir(p)
        .map(|d| {
            d.flatten()
                .map(|e| {
                    if e.path().is_dir() {
                        walk(&e.path())
                    } else {
                        1
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}

#[test]
fn jsonl_runner_prints_every_outcome() {
    let mut c = chain(
        &[
            spec("filter", &[("condition", "t > 1")]),
            spec("rename", &[("rule", "in => out")]),
        ],
        ErrorPolicy::Skip,
    );
    let input = r#"
# comment lines and blank lines are skipped
{"topic":"in","value":{"json":{"t":2}},"headers":{"h":"v"}}
{"topic":"in","offset":7,"value":"{\"t\":0}"}
{"topic":"x","key":{"base64":"/w=="},"value":{"json":{"t":5}},"headers":[["a",null]]}
"#;
    let mut out = Vec::new();
    let summary = er_plugin_host::run_jsonl(&mut c, input.as_bytes(), &mut out, 2).unwrap();
    let lines: Vec<serde_json::Value> = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["outcome"], "changed");
    assert_eq!(lines[0]["topic"], "out");
    assert_eq!(lines[0]["value"], r#"{"t":2}"#);
    assert_eq!(lines[0]["headers"], serde_json::json!([["h", "v"]]));
    assert_eq!(lines[1]["outcome"], "dropped");
    assert_eq!(lines[1]["source"]["offset"], 7);
    assert_eq!(lines[2]["outcome"], "kept");
    assert_eq!(lines[2]["key"], serde_json::json!({"base64": "/w=="}));
    assert_eq!(
        (summary.records_in, summary.records_out, summary.dropped),
        (3, 2, 1)
    );

    let err =
        er_plugin_host::run_jsonl(&mut c, r#"{"topic":1}"#.as_bytes(), Vec::new(), 10).unwrap_err();
    assert!(err.to_string().starts_with("input line 1:"), "{err}");
}

#[test]
fn jsonl_stop_names_the_failing_line_and_record_once() {
    let mut c = chain(
        &[spec(
            "fixture_hostile",
            &[("mode", "flood"), ("trigger", "bad")],
        )],
        ErrorPolicy::Stop,
    );
    let input = concat!(
        r#"{"topic":"s","partition":2,"offset":40,"value":"ok"}"#,
        "\n\n",
        r#"{"topic":"s","partition":2,"offset":41,"value":"bad"}"#,
        "\n",
    );
    let err = er_plugin_host::run_jsonl(&mut c, input.as_bytes(), Vec::new(), 10).unwrap_err();
    // As the agent's CLI prints it: anyhow's alternate form walks the source chain.
    let shown = format!("{:#}", anyhow::Error::from(err));
    assert!(
        shown.starts_with("input line 3: plugin ")
            && shown.ends_with(r#"(record at topic "s" partition 2 offset 41)"#),
        "{shown}"
    );
    assert_eq!(shown.matches("produced 1000 records").count(), 1, "{shown}");
}

/// A chain of one hostile plugin with its own output limits.
fn limited(config: &[(&str, &str)], policy: ErrorPolicy, limits: OutputLimits) -> Chain {
    host()
        .load_chain_with(&[spec("fixture_hostile", config)], policy, limits)
        .expect("load chain")
}

const DLQ: fn() -> ErrorPolicy = || ErrorPolicy::DeadLetter {
    topic: "dlq".into(),
};

#[test]
fn output_bytes_per_input_count_aliased_bytes() {
    // 100 outputs of the 3-byte input "bad" on topic "s": 400 bytes, all of them references
    // into the input.
    let limits = OutputLimits {
        max_outputs_per_input: 100,
        max_bytes_per_input: 200,
        max_bytes_per_batch: 1 << 30,
    };
    let flood = [("mode", "flood"), ("trigger", "bad"), ("outputs", "100")];
    let msg = process(&mut limited(&flood, ErrorPolicy::Stop, limits), &three())
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("fixture_hostile.wasm")
            && msg.contains(
                "produced 400 bytes of records for one input record, more than max_output_bytes_per_input = 200"
            )
            && msg.contains("offset 1001"),
        "{msg}"
    );
    let out = process(&mut limited(&flood, DLQ(), limits), &three()).unwrap();
    assert_eq!(sources(&out), [0, 1, 2]);
    assert_eq!(out[1].topic.as_deref(), Some("dlq"));
    assert_eq!(value(&out[1]), "bad");
    assert!(
        header(&out[1], "er.error")
            .unwrap()
            .contains("max_output_bytes_per_input"),
        "{out:?}"
    );

    // With the host's defaults: twenty references to one 1 MiB value are 20 MiB.
    let mut c = chain(
        &[spec(
            "fixture_hostile",
            &[("mode", "flood"), ("outputs", "20")],
        )],
        ErrorPolicy::Skip,
    );
    let mut big = rec("s", "");
    big.value = vec![b'x'; 1 << 20];
    let mut out = er_plugin_host::OutBatch::new();
    let input = [InRecord {
        topic: "s",
        partition: 0,
        offset: 5,
        timestamp: 0,
        key: None,
        value: Some(&big.value),
        headers: &[],
    }];
    c.process_into(&input, &mut out).unwrap();
    assert!(out.is_empty());
    assert!(
        matches!(
            out.failures()[0].failure,
            Failure::TooManyOutputBytes { produced, limit: er_plugin_host::DEFAULT_MAX_OUTPUT_BYTES_PER_INPUT }
                if produced == 20 * ((1 << 20) + 1)
        ),
        "{:?}",
        out.failures()
    );
}

#[test]
fn output_bytes_per_batch_fail_the_batch_under_the_policy() {
    // Each of five records grows into 1000 new bytes (plus its 1-byte topic).
    let limits = OutputLimits {
        max_outputs_per_input: 100,
        max_bytes_per_input: 1 << 30,
        max_bytes_per_batch: 2500,
    };
    let grow = [("mode", "grow"), ("bytes", "1000")];
    let five: Vec<Rec> = (0..5).map(|i| rec("s", &format!("r{i}"))).collect();

    let err = process(&mut limited(&grow, ErrorPolicy::Stop, limits), &five).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("fixture_hostile.wasm")
            && msg.contains(
                "produced 5000 bytes of records in one batch call, more than max_output_bytes_per_batch = 2500"
            )
            && msg.contains("batch of 5 records"),
        "{msg}"
    );

    // Skip: records are re-run one at a time and admitted in order while they fit.
    let mut skip = limited(&grow, ErrorPolicy::Skip, limits);
    let out = process(&mut skip, &five).unwrap();
    assert_eq!(sources(&out), [0, 1]);
    assert!(out.iter().all(|o| o.value.as_ref().unwrap().len() == 1000));

    let out = process(&mut limited(&grow, DLQ(), limits), &five).unwrap();
    assert_eq!(sources(&out), [0, 1, 2, 3, 4]);
    assert_eq!(out[2].topic.as_deref(), Some("dlq"));
    assert_eq!(value(&out[2]), "r2");
    assert!(
        header(&out[4], "er.error")
            .unwrap()
            .contains("more than max_output_bytes_per_batch = 2500"),
        "{out:?}"
    );
}

#[test]
fn texts_from_plugins_are_capped_with_a_marker() {
    let cap = er_plugin_host::MAX_TEXT_BYTES;
    let out = process(
        &mut chain(
            &[spec(
                "fixture_hostile",
                &[("mode", "bigfail"), ("bytes", "100000")],
            )],
            DLQ(),
        ),
        &[rec("s", "x")],
    )
    .unwrap();
    let error = header(&out[0], "er.error").unwrap();
    assert!(
        error.len() < cap + 200 && error.ends_with("\u{2026} [truncated: 100000 bytes]"),
        "{} bytes: {}",
        error.len(),
        &error[error.len().saturating_sub(80)..]
    );

    // A panic message reaches the route's error through the plugin's error log.
    let msg = process(
        &mut chain(
            &[spec(
                "fixture_hostile",
                &[("mode", "bigpanic"), ("bytes", "100000")],
            )],
            ErrorPolicy::Stop,
        ),
        &[rec("s", "x")],
    )
    .unwrap_err()
    .to_string();
    assert!(
        msg.contains("trapped") && msg.contains("[truncated: ") && msg.len() < cap + 8192,
        "{} bytes",
        msg.len()
    );

    // Counter names are cut, and a plugin cannot create counters without bound.
    let mut c = chain(
        &[spec(
            "fixture_hostile",
            &[
                ("mode", "counters"),
                ("outputs", "100"),
                ("bytes", "100000"),
            ],
        )],
        ErrorPolicy::Stop,
    );
    let logs = capture_logs(|| {
        process(&mut c, &[rec("s", "x")]).unwrap();
    });
    let counters = &c.stats()[0].counters;
    assert_eq!(
        counters.len(),
        er_plugin_host::MAX_COUNTERS + 1,
        "{counters:?}"
    );
    let (long, n) = &counters[0];
    assert!(
        *n == 1
            && long.starts_with("nnnn")
            && long.ends_with("[truncated: 100000 bytes]")
            && long.len() <= er_plugin_host::MAX_COUNTER_NAME_BYTES + 40,
        "{long}"
    );
    assert_eq!(counters[1], ("c0".to_owned(), 1));
    // The long name and c0..c62 are the 64 names; c63..c99 add up in the overflow counter.
    let other = counters
        .iter()
        .find(|(n, _)| n == er_plugin_host::OTHER_COUNTERS);
    assert_eq!(other.map(|(_, v)| *v), Some(37));
    // The log line: message, 16 fields of at most 256 bytes each, and a count of the rest.
    assert!(logs.contains("[truncated: 100000 bytes]"), "{logs}");
    assert!(logs.contains("(+84 fields)"), "{logs}");
    assert!(
        logs.len() < 16 * 400 + cap + 1024,
        "{} bytes logged",
        logs.len()
    );
}

/// Runs `f` with a tracing subscriber that records what is logged on this thread.
fn capture_logs(f: impl FnOnce()) -> String {
    #[derive(Clone, Default)]
    struct Buf(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Buf::default();
    let writer = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    tracing::subscriber::with_default(subscriber, f);
    let bytes = buf.0.lock().unwrap().clone();
    String::from_utf8(bytes).unwrap()
}

#[test]
fn a_plugin_at_its_memory_cap_leaves_room_for_another() {
    // Two pooling slots of 32 MiB each.
    let small = PluginHost::new(HostConfig {
        max_instances: 2,
        ..config()
    })
    .unwrap();
    let mut hog = small
        .load_chain(
            &[spec(
                "fixture_hostile",
                &[("mode", "hold"), ("bytes", &(28 << 20).to_string())],
            )],
            ErrorPolicy::Stop,
        )
        .unwrap();
    assert_eq!(sources(&process(&mut hog, &three()).unwrap()), [0, 1, 2]);
    // The hog sits near its cap; the other slot is whole.
    let mut other = small
        .load_chain(&[spec("identity", &[])], ErrorPolicy::Stop)
        .unwrap();
    assert_eq!(sources(&process(&mut other, &three()).unwrap()), [0, 1, 2]);
    // Two slots, two instances: a third is refused with an error naming the plugin.
    let err = small
        .load_chain(&[spec("transform", &[])], ErrorPolicy::Stop)
        .unwrap_err();
    assert!(
        matches!(err, PluginError::Instantiate { .. })
            && err.to_string().contains("transform.wasm"),
        "{err}"
    );
    // A freed slot is whole again, and a plugin going over its cap there fails alone.
    drop(hog);
    let mut bomb = small
        .load_chain(
            &[spec("fixture_hostile", &[("mode", "bomb")])],
            ErrorPolicy::Stop,
        )
        .unwrap();
    let err = process(&mut bomb, &three()).unwrap_err();
    assert!(
        matches!(
            err,
            ChainError::Plugin {
                failure: Failure::Memory { .. },
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(sources(&process(&mut other, &three()).unwrap()), [0, 1, 2]);
}

/// The example `name` precompiled into a fresh directory only this user can write, mode 0644.
fn precompiled(name: &str) -> (tempfile::TempDir, PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(format!("{name}.cwasm"));
    std::fs::write(&path, er_plugin_host::precompile(&wasm(name)).unwrap()).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    (dir, path)
}

fn filter_at(path: &Path) -> PluginSpec {
    PluginSpec {
        path: path.to_owned(),
        config: vec![("condition".into(), "temperature > 30".into())],
    }
}

#[test]
fn a_precompiled_plugin_runs_as_its_wasm_does_in_a_host_with_other_limits() {
    let (_dir, path) = precompiled("filter");
    let other = PluginHost::new(HostConfig {
        memory_limit_bytes: 16 << 20,
        max_instances: 4,
        ..config()
    })
    .unwrap();
    let recs = [
        rec("s", r#"{"temperature":31}"#),
        rec("s", r#"{"temperature":30}"#),
        rec("s", r#"{"temperature":45.5}"#),
    ];
    let mut native = other
        .load_chain(&[filter_at(&path)], ErrorPolicy::Stop)
        .unwrap();
    let mut compiled = chain(
        &[spec("filter", &[("condition", "temperature > 30")])],
        ErrorPolicy::Stop,
    );
    let (a, b) = (
        process(&mut native, &recs).unwrap(),
        process(&mut compiled, &recs).unwrap(),
    );
    assert_eq!(sources(&a), [0, 2]);
    assert_eq!(a, b);
}

#[test]
fn a_precompiled_plugin_other_users_could_have_written_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let (_dir, path) = precompiled("filter");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o664)).unwrap();
    match host().load_chain(&[filter_at(&path)], ErrorPolicy::Stop) {
        Err(PluginError::Precompiled { path: p, reason }) => {
            assert_eq!(p, path);
            assert!(reason.contains("let other users write it"), "{reason}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn a_damaged_precompiled_plugin_is_refused_with_the_reason() {
    let (_dir, path) = precompiled("filter");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    match host().load_chain(&[filter_at(&path)], ErrorPolicy::Stop) {
        Err(e @ PluginError::Precompiled { .. }) => {
            let text = e.to_string();
            assert!(
                text.contains("filter.cwasm") && text.contains("precompiled plugin refused"),
                "{text}"
            );
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// `precompile_for` the example `name` and `target`, into a fresh directory as [`precompiled`].
fn precompiled_for(name: &str, target: &str) -> (tempfile::TempDir, PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(format!("{name}.{target}.cwasm"));
    let bytes = std::fs::read(wasm(name)).unwrap();
    let artifact = er_plugin_host::precompile_for(&bytes, &wasm(name), target).unwrap();
    std::fs::write(&path, artifact).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    (dir, path)
}

#[test]
fn a_plugin_precompiled_for_this_target_by_name_runs_as_its_wasm_does() {
    // Named targets get the architecture's baseline code, not the compiling CPU's features:
    // what a hub makes for a fleet. It still loads and gives the same records here.
    let (_dir, path) = precompiled_for("filter", &er_plugin_host::this_target());
    let recs = [
        rec("s", r#"{"temperature":31}"#),
        rec("s", r#"{"temperature":29}"#),
    ];
    let mut native = host()
        .load_chain(&[filter_at(&path)], ErrorPolicy::Stop)
        .unwrap();
    assert_eq!(sources(&process(&mut native, &recs).unwrap()), [0]);
}

#[cfg(feature = "cross")]
#[test]
fn a_plugin_precompiled_for_another_architecture_is_refused_naming_it() {
    let other = if std::env::consts::ARCH == "aarch64" {
        "x86_64-linux"
    } else {
        "aarch64-linux"
    };
    let (_dir, path) = precompiled_for("filter", other);
    match host().load_chain(&[filter_at(&path)], ErrorPolicy::Stop) {
        Err(e @ PluginError::Precompiled { .. }) => {
            let text = e.to_string();
            let arch = other.split_once('-').unwrap().0;
            assert!(
                text.contains("compiled for architecture") && text.contains(arch),
                "{text}"
            );
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn unknown_targets_are_refused_before_compiling() {
    for (target, says) in [
        ("sparc-linux", "architecture not one of"),
        ("x86_64-plan9", "operating system not one of"),
        ("linux", "expected <arch>-<os>"),
    ] {
        let e = er_plugin_host::precompile_for(b"\0asm", Path::new("f.wasm"), target).unwrap_err();
        assert!(e.to_string().contains(says), "{target}: {e}");
    }
    assert_eq!(
        er_plugin_host::target_triple("riscv64-linux").unwrap(),
        "riscv64gc-unknown-linux-gnu"
    );
}
