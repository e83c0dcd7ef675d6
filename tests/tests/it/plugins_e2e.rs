//! Plugins in the pipeline, end to end on real Apache Kafka: edge broker -> edge-agent (plugin
//! routes) -> QUIC/mTLS -> hub -> central broker.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use er_tests::client::{self, NewRecord, Record};
use er_tests::kafka::shared;
use er_tests::replicator::{AgentSetup, Pki, Proc, bin, example_plugin, logs};
use er_tests::rig::Rig;
use er_tests::unique_name;

/// One `[[routes]]` table.
fn route(name: &str, topic: &str, on_error: &str, plugins: &[(&Path, &str)]) -> String {
    let mut s = format!(
        "\n[[routes]]\nname = {name:?}\ntopics = [{:?}]\n{on_error}\n",
        regex_escape(topic)
    );
    for (path, config) in plugins {
        s.push_str(&format!(
            "[[routes.plugins]]\npath = {:?}\nconfig = {{ {config} }}\n",
            path.display().to_string()
        ));
    }
    s
}

fn regex_escape(s: &str) -> String {
    s.replace('.', "\\.")
}

/// Topics on `bootstrap` whose name starts with `prefix`.
async fn topics_with_prefix(bootstrap: &str, prefix: &str) -> anyhow::Result<BTreeSet<String>> {
    Ok(client::list_topics(bootstrap)
        .await?
        .into_iter()
        .filter(|t| t.starts_with(prefix))
        .collect())
}

/// Reads `topic` (once it exists) until `n` records or the timeout.
pub(crate) async fn read(bootstrap: &str, topic: &str, n: usize, procs: &[&Proc]) -> Vec<Record> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if client::partition_ids(bootstrap, topic).await.is_ok() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "topic {topic} never appeared\n{}",
            logs(procs)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    client::consume_all(bootstrap, topic, n, Duration::from_secs(120))
        .await
        .expect("consuming")
}

fn values(records: &[Record]) -> Vec<String> {
    records
        .iter()
        .map(|r| String::from_utf8_lossy(r.value.as_deref().unwrap_or_default()).into_owned())
        .collect()
}

fn json_reading(seq: usize, temperature: u32) -> String {
    format!(
        r#"{{"seq":{seq},"sensor":"s-{}","temperature":{temperature}}}"#,
        seq % 17
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn filter_then_rename_delivers_exactly_the_kept_records_under_the_new_name()
-> anyhow::Result<()> {
    let k = shared();
    let prefix = unique_name("flt");
    let site = unique_name("site");
    let source = format!("{prefix}-sensors");
    let renamed = format!("{prefix}-hot");
    const TOTAL: usize = 100_000;
    const PARTITIONS: i32 = 4;
    client::create_topic(k.edge(), &source, PARTITIONS, &[]).await?;
    // About 10% are hot, in irregular runs so batches start and end inside dropped runs.
    let base_ts = client::now_ms() - 600_000;
    let hot = |i: usize| (i * 7919) % 100 < 10;
    let recs: Vec<NewRecord> = (0..TOTAL)
        .map(|i| {
            let t = if hot(i) {
                31 + (i % 9) as u32
            } else {
                (i % 31) as u32
            };
            NewRecord::new(format!("k{i}"), json_reading(i, t))
                .partition((i % PARTITIONS as usize) as i32)
                .timestamp(base_ts + i as i64)
                .header("src", Some(b"edge"))
        })
        .collect();
    let producer = client::producer(k.edge(), &[])?;
    client::send_all(&producer, &source, &recs).await?;
    let mut want: BTreeMap<i32, Vec<&NewRecord>> = BTreeMap::new();
    for (i, r) in recs.iter().enumerate() {
        if hot(i) {
            want.entry(r.partition.unwrap()).or_default().push(r);
        }
    }
    let kept: usize = want.values().map(Vec::len).sum();

    let mut rig = Rig::builder().site(&site).start()?;
    let mut agent_setup = rig.agent_setup(&site, &format!("{prefix}-.*"));
    agent_setup.extra.push_str(&route(
        "hot",
        &source,
        "on_error = \"stop\"",
        &[
            (
                &example_plugin("filter"),
                r#"condition = ["temperature > 30"]"#,
            ),
            (
                &example_plugin("rename"),
                &format!(
                    r#""rule.1" = "{} => {renamed}""#,
                    regex_escape(&source).replace('\\', "\\\\")
                ),
            ),
        ],
    ));
    let started = Instant::now();
    rig.start_agent(&agent_setup)?;
    let remote = format!("{site}.{renamed}");
    let got = read(k.central(), &remote, kept, &rig.procs()).await;
    // Without the settle period the read went on for after the last record.
    let elapsed = started.elapsed().saturating_sub(client::SETTLE);
    assert_eq!(got.len(), kept, "kept records\n{}", rig.logs());
    for (p, want) in &want {
        let have: Vec<&Record> = got.iter().filter(|r| r.partition == *p).collect();
        assert_eq!(have.len(), want.len(), "partition {p}");
        for (h, w) in have.iter().zip(want) {
            assert_eq!(h.key, w.key, "partition {p}: order or content");
            assert_eq!(h.value, w.value, "partition {p}: order or content");
            assert_eq!(h.headers, w.headers);
            assert_eq!(h.timestamp_ms(), w.timestamp);
        }
    }
    eprintln!(
        "filter+rename: {TOTAL} source records, {kept} kept, delivered in {:.2} s including startup",
        elapsed.as_secs_f64()
    );
    // Wait until the agent has moved past the last source record (a trailing dropped run
    // produces no output but does move the position), then check nothing else appeared.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let again = client::consume_to_end(k.central(), &remote, Duration::from_secs(30)).await?;
    assert_eq!(again.len(), kept, "no duplicates appear later");
    // Heartbeats (other tests' agents write them to the shared edge cluster) and checkpoints
    // are the site's MM2 topics, not replicated data.
    let site_topics: BTreeSet<String> = topics_with_prefix(k.central(), &format!("{site}."))
        .await?
        .into_iter()
        .filter(|t| *t != format!("{site}.heartbeats") && !t.ends_with(".internal"))
        .collect();
    assert_eq!(
        site_topics,
        BTreeSet::from([remote.clone()]),
        "only the renamed topic exists for the site (no empty `{site}.{source}`)"
    );
    assert!(
        rig.agent(&site)
            .log_text()
            .contains("partition takes a plugin route")
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_plugins_are_contained_and_other_routes_keep_flowing() -> anyhow::Result<()> {
    let k = shared();
    let p = unique_name("hos");
    let site = unique_name("site");
    let hostile = example_plugin("fixture_hostile");
    let t = |s: &str| format!("{p}-{s}");
    for name in ["loop", "bomb", "panic", "flood", "escape", "good"] {
        client::create_topic(k.edge(), &t(name), 1, &[]).await?;
    }
    let mut rig = Rig::builder().site(&site).start()?;
    let mut agent_setup = rig.agent_setup(&site, &format!("{p}-.*"));
    agent_setup.extra.push_str(
        "\n[plugins]\nmemory_limit_mb = 32\nbatch_deadline_ms = 300\nmax_outputs_per_input = 100\nstopped_route_retry_ms = 600000\n",
    );
    let hostile_route = |name: &str, on_error: &str, mode: &str| {
        route(
            name,
            &t(name),
            on_error,
            &[(&hostile, &format!(r#"mode = "{mode}", trigger = "boom""#))],
        )
    };
    agent_setup
        .extra
        .push_str(&hostile_route("loop", "on_error = \"skip\"", "loop"));
    agent_setup
        .extra
        .push_str(&hostile_route("bomb", "on_error = \"skip\"", "bomb"));
    agent_setup
        .extra
        .push_str(&hostile_route("panic", "on_error = \"stop\"", "panic"));
    agent_setup.extra.push_str(&hostile_route(
        "flood",
        &format!(
            "on_error = \"dead-letter\"\ndead_letter_topic = {:?}",
            t("dlq")
        ),
        "flood",
    ));
    agent_setup.extra.push_str(&route(
        "escape",
        &t("escape"),
        "on_error = \"skip\"",
        &[(&hostile, r#"mode = "escape""#)],
    ));
    rig.start_agent(&agent_setup)?;
    let procs = rig.procs();

    // The panic route: a good record first, so we know the route was flowing before it stopped.
    client::produce(k.edge(), &t("panic"), &[NewRecord::new("k", "a")]).await?;
    assert_eq!(
        values(&read(k.central(), &format!("{site}.{}", t("panic")), 1, &procs).await),
        ["a"]
    );
    let abc = [
        NewRecord::new("k", "a"),
        NewRecord::new("k", "boom"),
        NewRecord::new("k", "b"),
    ];
    for name in ["loop", "bomb", "panic", "flood"] {
        client::produce(k.edge(), &t(name), &abc).await?;
    }
    client::produce(k.edge(), &t("escape"), &[NewRecord::new("k", "x")]).await?;
    let good: Vec<NewRecord> = (0..2_000)
        .map(|i| NewRecord::new(format!("k{i}"), format!("{i}")))
        .collect();
    client::produce(k.edge(), &t("good"), &good).await?;

    let remote = |name: &str| format!("{site}.{}", t(name));
    assert_eq!(
        read(k.central(), &remote("good"), 2_000, &procs)
            .await
            .len(),
        2_000,
        "a route without plugins flows while others misbehave"
    );
    for name in ["loop", "bomb"] {
        assert_eq!(
            values(&read(k.central(), &remote(name), 2, &procs).await),
            ["a", "b"],
            "{name}: the bad record is skipped, the others pass\n{}",
            rig.logs()
        );
    }
    assert_eq!(
        values(&read(k.central(), &remote("flood"), 2, &procs).await),
        ["a", "b"]
    );
    let dlq = read(k.central(), &remote("dlq"), 1, &procs).await;
    assert_eq!(
        values(&dlq),
        ["boom"],
        "the flooding record is dead-lettered"
    );
    let error = dlq[0]
        .headers
        .iter()
        .find(|(k, _)| k == "er.error")
        .and_then(|(_, v)| v.clone())
        .map(|v| String::from_utf8_lossy(&v).into_owned())
        .expect("er.error header");
    assert!(
        error.contains("1000") && error.contains("100"),
        "error names the count and the bound: {error}"
    );
    let escaped = values(&read(k.central(), &remote("escape"), 1, &procs).await);
    for capability in [
        "file=denied",
        "dir=denied",
        "create=denied",
        "tcp=denied",
        "env=0",
    ] {
        assert!(
            escaped[0].contains(capability),
            "{capability} in {}",
            escaped[0]
        );
    }
    // The stopped route: nothing after the failing batch's first record arrives, nothing is lost
    // (it waits at the edge), and the agent lives.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let panic_out =
        client::consume_to_end(k.central(), &remote("panic"), Duration::from_secs(20)).await?;
    let panic_values = values(&panic_out);
    assert!(
        !panic_values.contains(&"boom".to_owned()) && !panic_values.contains(&"b".to_owned()),
        "a stopped route moves no further: {panic_values:?}"
    );
    let log = rig.agent(&site).log_text();
    assert!(
        log.contains("route stopped by a plugin failure"),
        "{}",
        rig.logs()
    );
    assert!(
        log.contains("fixture panics on record at offset"),
        "{}",
        rig.logs()
    );
    assert!(
        rig.agent_mut(&site).is_running(),
        "the agent survives every hostile plugin"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hot_reload_while_records_flow_loses_and_duplicates_nothing() -> anyhow::Result<()> {
    let k = shared();
    let p = unique_name("rel");
    let site = unique_name("site");
    let topic_in = format!("{p}-in");
    let topic_out = format!("{p}-out");
    const PARTITIONS: i32 = 2;
    const TOTAL: usize = 12_000;
    client::create_topic(k.edge(), &topic_in, PARTITIONS, &[]).await?;
    // The route's plugin file starts as identity (which ignores settings) and is replaced by
    // rename (which honours the same settings) while records flow.
    let mut rig = Rig::builder().site(&site).start()?;
    let live = rig.dir().join("live.wasm");
    std::fs::copy(example_plugin("identity"), &live)?;
    let mut agent_setup = rig.agent_setup(&site, &format!("{p}-.*"));
    agent_setup.max_records = 200;
    agent_setup.extra.push_str(&route(
        "live",
        &topic_in,
        "on_error = \"stop\"",
        &[(
            &live,
            &format!(
                r#""rule.1" = "{} => {topic_out}""#,
                regex_escape(&topic_in).replace('\\', "\\\\")
            ),
        )],
    ));
    rig.start_agent(&agent_setup)?;

    let edge = k.edge().to_owned();
    let t2 = topic_in.clone();
    let producing = tokio::spawn(async move {
        let prod = client::producer(&edge, &[])?;
        for chunk in 0..40 {
            let recs: Vec<NewRecord> = (chunk * 300..(chunk + 1) * 300)
                .map(|i| {
                    NewRecord::new(format!("k{i}"), format!("{i:06}"))
                        .partition((i % PARTITIONS as usize) as i32)
                })
                .collect();
            client::send_all(&prod, &t2, &recs).await?;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        anyhow::Ok(())
    });
    // Let some records through the first version, then swap the file atomically.
    let procs = rig.procs();
    // Only until 1,000 are there (end offsets, not a full read: a read waits for the end of
    // the topic and a settle period, by when every record went through the first version).
    let remote_in = format!("{site}.{topic_in}");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let through: i64 = client::end_offsets(k.central(), &remote_in)
            .await
            .map(|ends| ends.iter().map(|(_, end)| *end).sum())
            .unwrap_or(0);
        if through >= 1_000 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "1,000 records never went through the first version ({through})\n{}",
            rig.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let staged = rig.dir().join("live.wasm.new");
    std::fs::copy(example_plugin("rename"), &staged)?;
    std::fs::rename(&staged, &live)?;
    producing.await??;

    let out = read(k.central(), &format!("{site}.{topic_out}"), 1, &procs).await;
    assert!(!out.is_empty(), "the new version renames\n{}", rig.logs());
    // Wait until every record is somewhere, then check the union is exact.
    let deadline = Instant::now() + Duration::from_secs(120);
    let (ins, outs) = loop {
        let ins = client::consume_to_end(
            k.central(),
            &format!("{site}.{topic_in}"),
            Duration::from_secs(20),
        )
        .await?;
        let outs = client::consume_to_end(
            k.central(),
            &format!("{site}.{topic_out}"),
            Duration::from_secs(20),
        )
        .await?;
        if ins.len() + outs.len() >= TOTAL || Instant::now() > deadline {
            break (ins, outs);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    // Once more after a settle period: a duplicate committed just after the last record counts.
    tokio::time::sleep(client::SETTLE).await;
    let ins = client::consume_to_end(
        k.central(),
        &format!("{site}.{topic_in}"),
        Duration::from_secs(20),
    )
    .await
    .unwrap_or(ins);
    let outs = client::consume_to_end(
        k.central(),
        &format!("{site}.{topic_out}"),
        Duration::from_secs(20),
    )
    .await
    .unwrap_or(outs);
    let seq = |r: &Record| -> usize {
        std::str::from_utf8(r.value.as_deref().unwrap())
            .unwrap()
            .parse()
            .unwrap()
    };
    let mut all: Vec<usize> = ins.iter().chain(&outs).map(seq).collect();
    all.sort_unstable();
    assert_eq!(
        all,
        (0..TOTAL).collect::<Vec<_>>(),
        "every record exactly once\n{}",
        rig.logs()
    );
    for part in 0..PARTITIONS {
        let last_in = ins.iter().filter(|r| r.partition == part).map(seq).max();
        let first_out = outs.iter().filter(|r| r.partition == part).map(seq).min();
        if let (Some(a), Some(b)) = (last_in, first_out) {
            assert!(
                a < b,
                "partition {part}: the switch happens between batches ({a} >= {b})"
            );
        }
    }
    assert!(
        rig.agent(&site)
            .log_text()
            .contains("plugin changed on disk; reloaded")
    );
    Ok(())
}

/// Runs `edge-agent check-config` on a config with one route using `plugin` (settings
/// `config`); returns (success, stderr).
fn check_config(dir: &Path, pki: &Pki, site: &str, plugin: &Path, config: &str) -> (bool, String) {
    let mut setup = AgentSetup::new(site, "127.0.0.1:1", 1, "x");
    setup.extra = route("r", "x", "", &[(plugin, config)]);
    let path = dir.join("agent.toml");
    std::fs::write(&path, setup.toml(pki)).unwrap();
    let out = std::process::Command::new(bin("edge-agent").unwrap())
        .args(["check-config", path.to_str().unwrap()])
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn broken_plugins_fail_at_startup_naming_the_file() -> anyhow::Result<()> {
    let site = unique_name("site");
    let pki = Pki::new(&[&site])?;
    let dir = tempfile::tempdir()?;
    let garbage = dir.path().join("garbage.wasm");
    std::fs::write(&garbage, b"\0asm not really")?;
    let missing = dir.path().join("missing.wasm");
    let cases: [(PathBuf, &str, &str); 5] = [
        (garbage.clone(), "", "garbage.wasm"),
        (missing.clone(), "", "missing.wasm"),
        (
            example_plugin("fixture_wrong_world"),
            "",
            "fixture_wrong_world.wasm",
        ),
        (
            example_plugin("fixture_wrong_version"),
            "",
            "fixture_wrong_version.wasm",
        ),
        (
            example_plugin("filter"),
            r#"condition = "temperature >>> hot""#,
            "filter.wasm",
        ),
    ];
    for (path, config, name) in cases {
        let (ok, stderr) = check_config(dir.path(), &pki, &site, &path, config);
        assert!(!ok, "{name} must be refused");
        assert!(
            stderr.contains(name),
            "{name}: the error names the file: {stderr}"
        );
        assert!(
            stderr.contains("route \"r\""),
            "{name}: names the route: {stderr}"
        );
    }
    let (ok, stderr) = check_config(
        dir.path(),
        &pki,
        &site,
        &example_plugin("filter"),
        r#"condition = "temperature > 3""#,
    );
    assert!(ok, "a good plugin passes: {stderr}");

    // The agent itself refuses to start, before touching Kafka or the hub.
    let mut setup = AgentSetup::new(&site, "127.0.0.1:1", 1, "x");
    setup.extra = route(
        "r",
        "x",
        "",
        &[(&example_plugin("fixture_wrong_world"), "")],
    );
    let path = dir.path().join("agent-run.toml");
    std::fs::write(&path, setup.toml(&pki))?;
    let out = std::process::Command::new(bin("edge-agent")?)
        .args(["--config", path.to_str().unwrap()])
        .output()?;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("fixture_wrong_world.wasm"), "{stderr}");
    Ok(())
}

#[test]
fn plugin_test_command_runs_a_chain_over_json_lines() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let input = dir.path().join("in.jsonl");
    std::fs::write(
        &input,
        concat!(
            "# two sensors\n",
            r#"{"topic":"sensors.a","offset":7,"value":{"json":{"temperature":31}}}"#,
            "\n",
            r#"{"topic":"sensors.a","offset":8,"value":{"json":{"temperature":12}}}"#,
            "\n",
        ),
    )?;
    let out = std::process::Command::new(bin("edge-agent")?)
        .args(["plugin", "test", "--plugin"])
        .arg(example_plugin("filter"))
        .arg("--plugin")
        .arg(example_plugin("rename"))
        .args(["--set", "0:condition=temperature > 30"])
        .args(["--set", r"1:rule=sensors\.(.*) => hot.$1"])
        .arg("--input")
        .arg(&input)
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)?
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(lines[0]["outcome"], "changed");
    assert_eq!(lines[0]["topic"], "hot.a");
    assert_eq!(lines[0]["source"]["offset"], 7);
    assert_eq!(lines[0]["value"], r#"{"temperature":31}"#);
    assert_eq!(lines[1]["outcome"], "dropped");
    assert_eq!(lines[1]["source"]["offset"], 8);
    assert!(
        stderr.contains("2 records in, 1 out, 1 dropped, 0 failed"),
        "{stderr}"
    );

    // A bad setting is a clear error naming the plugin.
    let out = std::process::Command::new(bin("edge-agent")?)
        .args(["plugin", "test", "--plugin"])
        .arg(example_plugin("filter"))
        .args(["--set", "condition=nonsense", "--input"])
        .arg(&input)
        .output()?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("filter.wasm"));
    Ok(())
}

/// One source record's outputs travel in one batch, so together they must fit the room the
/// hub's batch limit leaves: a plugin expanding a record beyond it fails that record under the
/// route's policy (here: to the dead-letter topic), and never makes a batch the hub refuses on
/// every reconnect. The records around it flow, in one session.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_record_expanded_beyond_the_batch_room_fails_under_its_route_policy() -> anyhow::Result<()>
{
    let k = shared();
    let p = unique_name("fan");
    let site = unique_name("site");
    let hostile = example_plugin("fixture_hostile");
    let (topic, dlq) = (format!("{p}-in"), format!("{p}-dlq"));
    client::create_topic(k.edge(), &topic, 1, &[]).await?;
    let rig = Rig::builder()
        .hub(|h| h.extra = "[limits]\nmax_batch_bytes = 1048576\n".into())
        .agent_with(&site, &topic, |a| {
            // 12 outputs of 100 kB: 1.2 MB for one record, more than half the hub's 1 MiB batch.
            a.extra.push_str(&route(
                "fan",
                &topic,
                &format!("on_error = \"dead-letter\"\ndead_letter_topic = {dlq:?}"),
                &[(
                    &hostile,
                    r#"mode = "fan", trigger = "boom", outputs = "12", bytes = "100000""#,
                )],
            ));
        })
        .start()?;
    let procs = rig.procs();
    client::produce(
        k.edge(),
        &topic,
        &[
            NewRecord::new("k", "a"),
            NewRecord::new("k", "boom"),
            NewRecord::new("k", "b"),
        ],
    )
    .await?;
    assert_eq!(
        values(&read(k.central(), &format!("{site}.{topic}"), 2, &procs).await),
        ["a", "b"],
        "{}",
        rig.logs()
    );
    let dead = read(k.central(), &format!("{site}.{dlq}"), 1, &procs).await;
    assert_eq!(
        values(&dead),
        ["boom"],
        "the expanded record is dead-lettered"
    );
    let error = dead[0].header_text("er.error").expect("er.error header");
    assert!(
        error.contains("room for") && error.contains("max_batch_bytes"),
        "the error names the limit: {error}"
    );
    assert_eq!(
        rig.hub.log_text().matches("welcoming site").count(),
        1,
        "one session throughout\n{}",
        rig.logs()
    );
    Ok(())
}

/// `plugin compile` writes the native code of a plugin; the agent runs that file as it runs the
/// plugin itself, and refuses one another user could have replaced.
#[test]
fn a_plugin_compiled_by_the_agent_runs_as_the_wasm_does() -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir()?;
    let input = dir.path().join("in.jsonl");
    std::fs::write(
        &input,
        concat!(
            r#"{"topic":"sensors.a","offset":7,"value":{"json":{"temperature":31}}}"#,
            "\n",
            r#"{"topic":"sensors.a","offset":8,"value":{"json":{"temperature":12}}}"#,
            "\n",
        ),
    )?;
    let native = dir.path().join("filter.cwasm");
    let out = std::process::Command::new(bin("edge-agent")?)
        .args(["plugin", "compile"])
        .arg(example_plugin("filter"))
        .arg("-o")
        .arg(&native)
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("filter.cwasm"), "{stdout}");
    std::fs::set_permissions(&native, std::fs::Permissions::from_mode(0o644))?;
    let run = |plugin: &std::path::Path| -> anyhow::Result<std::process::Output> {
        Ok(std::process::Command::new(bin("edge-agent")?)
            .args(["plugin", "test", "--plugin"])
            .arg(plugin)
            .args(["--set", "condition=temperature > 30", "--input"])
            .arg(&input)
            .output()?)
    };
    let (from_wasm, from_native) = (run(&example_plugin("filter"))?, run(&native)?);
    assert!(
        from_native.status.success(),
        "{}",
        String::from_utf8_lossy(&from_native.stderr)
    );
    assert_eq!(from_native.stdout, from_wasm.stdout);
    assert!(String::from_utf8_lossy(&from_native.stdout).contains(r#""outcome":"kept""#));

    std::fs::set_permissions(&native, std::fs::Permissions::from_mode(0o666))?;
    let refused = run(&native)?;
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(
        stderr.contains("filter.cwasm") && stderr.contains("let other users write it"),
        "{stderr}"
    );
    Ok(())
}
