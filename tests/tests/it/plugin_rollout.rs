//! Hub-distributed plugins rolled out across a fleet: the real hub binary and `hub plugins`
//! commands on real Kafka, ten simulated sites (er_tests::fleet) that check signatures as the
//! agent does and report what each version ran. A canary whose version fails its records is
//! rolled back automatically, a good one is promoted to every site, and a push signed with a
//! key the sites do not trust runs nowhere.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};
use er_tests::fleet::{self, Fleet, FleetConfig, SimPlugins};
use er_tests::replicator::{self, HubSetup, Pki, tail};

const SITES: usize = 10;

/// Runs `hub <args>` to completion; its stdout.
fn hub_cli(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(replicator::bin("hub")?)
        .args(args)
        .output()
        .context("running the hub binary")?;
    if !out.status.success() {
        bail!(
            "hub {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// A new signing key in `dir`: its path and public key.
fn keygen(dir: &Path, name: &str) -> anyhow::Result<(String, [u8; 32])> {
    let path = dir.join(name);
    let out = hub_cli(&["plugins", "keygen", "--out", path.to_str().unwrap()])?;
    let public = out
        .lines()
        .find_map(|l| l.rsplit_once(": ").map(|(_, k)| k.trim().to_owned()))
        .context("keygen printed no public key")?;
    Ok((
        path.to_str().unwrap().to_owned(),
        er_net::signing::parse_public_key(&public)?,
    ))
}

fn push(config: &str, key: &str, wasm: &Path, canary: Option<u8>) -> anyhow::Result<String> {
    let wasm = wasm.to_str().unwrap();
    let mut args = vec!["plugins", "push", "--config", config, "--key", key];
    let pct = canary.map(|c| c.to_string());
    if let Some(p) = &pct {
        args.extend(["--canary", p]);
    }
    args.extend(["filter", wasm]);
    hub_cli(&args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_canary_is_rolled_back_a_good_one_promoted_and_an_unsigned_push_runs_nowhere()
-> anyhow::Result<()> {
    let k = er_tests::kafka::shared();
    let work = tempfile::tempdir()?;
    let pki_dir = tempfile::tempdir()?;
    let prefix = format!("pr{:04x}", rand::random::<u16>());
    let sites = fleet::site_names(&prefix, SITES);
    fleet::issue_certs(pki_dir.path(), &sites)?;
    let pki = Pki::from_dir(pki_dir);
    let mut setup = HubSetup::new(k.central())?;
    setup
        .extra
        .push_str("[plugins]\nmin_records = 200\ncanary_seconds = 6\n");
    let hub = setup.start(&pki, work.path())?;
    let config = setup.config_path(work.path());
    let config = config.to_str().unwrap();
    let logs = || format!("hub log:\n{}", tail(&hub.log_text(), 80));

    let (key, public) = keygen(work.path(), "signing.key")?;
    // Simulated sites run nothing: any component bytes will do, each version its own.
    let wasm = |v: u8| -> anyhow::Result<std::path::PathBuf> {
        let p = work.path().join(format!("filter-{v}.wasm"));
        std::fs::write(&p, [b"\0asm".as_slice(), &[1, 0, 0, 0, v]].concat())?;
        Ok(p)
    };
    let out = push(config, &key, &wasm(1)?, None)?;
    assert!(out.contains("pushed filter v1"), "{out}");

    let hub_addr: SocketAddr = ([127, 0, 0, 1], setup.port).into();
    let mut cfg = FleetConfig::new(hub_addr, pki.dir(), sites);
    cfg.rate_per_site = 0.0;
    cfg.plugins = Some(SimPlugins {
        name: "filter".into(),
        trusted: vec![public],
        failing: BTreeSet::from([2]),
        records_per_interval: 100,
        interval: Duration::from_millis(500),
    });
    let fleet = Fleet::start(cfg).await?;
    let all_on = |v: u64| move |s: &fleet::FleetStatus| s.plugin_versions.iter().all(|&x| x == v);
    fleet
        .wait_until("every site runs v1", Duration::from_secs(60), all_on(1))
        .await
        .map_err(|e| anyhow::anyhow!("{e:#}\n{}", logs()))?;

    // v2 fails every record: its canary (20%: two sites) is rolled back, all sites on v1.
    push(config, &key, &wasm(2)?, Some(20))?;
    fleet
        .wait_until(
            "v2 rolled back",
            Duration::from_secs(60),
            |s: &fleet::FleetStatus| {
                s.plugin_history.iter().any(|h| h.contains(&2))
                    && s.plugin_versions.iter().all(|&x| x == 1)
            },
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e:#}\n{}", logs()))?;
    let ran_v2 = fleet
        .status()
        .plugin_history
        .iter()
        .filter(|h| h.contains(&2))
        .count();
    assert_eq!(ran_v2, 2, "the canary is 20% of 10 sites\n{}", logs());
    let status = hub_cli(&["plugins", "status", "--config", config])?;
    let row = status
        .lines()
        .find(|l| l.starts_with("filter"))
        .unwrap_or("");
    assert!(
        row.contains("v1") && row.ends_with("v2"),
        "stable v1, v2 rolled back:\n{status}"
    );
    assert!(
        hub.log_text().contains("canary rolled back"),
        "the hub says why\n{}",
        logs()
    );

    // v3 is as good as v1: two sites run it first, then every site.
    push(config, &key, &wasm(3)?, Some(20))?;
    fleet
        .wait_until(
            "the v3 canary runs",
            Duration::from_secs(30),
            |s: &fleet::FleetStatus| s.plugin_versions.contains(&3),
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e:#}\n{}", logs()))?;
    let on_v3 = fleet
        .status()
        .plugin_versions
        .iter()
        .filter(|&&v| v == 3)
        .count();
    assert_eq!(on_v3, 2, "only the canary sites run v3 first\n{}", logs());
    fleet
        .wait_until("v3 promoted", Duration::from_secs(60), all_on(3))
        .await
        .map_err(|e| anyhow::anyhow!("{e:#}\n{}", logs()))?;
    // The status is what the sites last reported (each every few seconds) as the hub stored
    // it: it follows the sites, eventually.
    let sites = fleet::site_names(&prefix, SITES);
    let all_on_v3 = |status: &str| {
        status
            .lines()
            .any(|l| l.starts_with("filter") && l.contains(" v3 "))
            && sites.iter().all(|site| {
                status
                    .lines()
                    .find(|l| l.starts_with(site.as_str()))
                    .is_some_and(|l| l.contains("filter v3"))
            })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut status = hub_cli(&["plugins", "status", "--config", config])?;
    while !all_on_v3(&status) {
        assert!(
            std::time::Instant::now() < deadline,
            "v3 stable and every site on it in the status:\n{status}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
        status = hub_cli(&["plugins", "status", "--config", config])?;
    }

    // A push signed with another key: offered everywhere, run nowhere.
    let (other_key, _) = keygen(work.path(), "other.key")?;
    push(config, &other_key, &wasm(4)?, None)?;
    fleet
        .wait_until(
            "every site refused v4",
            Duration::from_secs(30),
            |s: &fleet::FleetStatus| s.plugin_refusals >= SITES as u64,
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e:#}\n{}", logs()))?;
    assert!(
        fleet.status().plugin_versions.iter().all(|&v| v == 3),
        "the sites keep running v3"
    );
    fleet.stop().await;
    Ok(())
}

/// A real agent whose route names a hub plugin: its records wait at the edge until the first
/// version arrives, then flow through it; a second version (another component) takes over
/// between batches, and nothing is lost or doubled across the switch; a third, pushed with a
/// build precompiled for the agent's target, arrives as that build and runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_agent_runs_the_plugin_the_hub_pushes_and_switches_without_loss() -> anyhow::Result<()> {
    use er_tests::client::{self, NewRecord};
    use er_tests::replicator::example_plugin;
    use er_tests::rig::Rig;

    let k = er_tests::kafka::shared();
    let p = er_tests::unique_name("hp");
    let site = er_tests::unique_name("site");
    let (source, renamed) = (format!("{p}-in"), format!("{p}-renamed"));
    client::create_topic(k.edge(), &source, 1, &[]).await?;
    let producer = client::producer(k.edge(), &[])?;
    let batch = |from: usize| -> Vec<NewRecord> {
        (from..from + 100)
            .map(|i| NewRecord::new(format!("k{i}"), format!("v{i}")).partition(0))
            .collect()
    };
    client::send_all(&producer, &source, &batch(0)).await?;

    let keys = tempfile::tempdir()?;
    let (key, public) = keygen(keys.path(), "signing.key")?;
    let public = er_net::signing::hex(&public);
    let route = format!(
        "\n[[routes]]\nname = \"shaped\"\ntopics = [{:?}]\n[[routes.plugins]]\nhub = \"shape\"\nconfig = {{ \"rule.1\" = {:?} }}\n",
        source,
        format!("{source} => {renamed}")
    );
    let mut rig = Rig::builder()
        .agent_with(&site, &format!("{p}-.*"), |a| {
            a.extra = format!(
                "[plugins]\ntrusted_keys = [{public:?}]\nstopped_route_retry_ms = 500\n{route}"
            );
        })
        .start()?;
    let agent = rig.agent(&site);
    agent
        .wait_for_log(
            "route waits for its plugins from the hub",
            Duration::from_secs(60),
        )
        .map_err(|e| anyhow::anyhow!("{e:#}\n{}", rig.logs()))?;
    let config = rig.hub_config();
    let config = config.to_str().unwrap();

    // v1 keeps every record: the 100 that waited arrive under their own name.
    let out = push_named(config, &key, "shape", &example_plugin("identity"))?;
    assert!(out.contains("pushed shape v1"), "{out}");
    let up = format!("{site}.{source}");
    let got =
        crate::common::read_seqs_by_key(k.central(), &up, 100, Duration::from_secs(120)).await?;
    assert_eq!(got, (0..100).collect::<Vec<_>>(), "{}", rig.logs());

    // v2 renames: installed, it takes over at the route's next batch (reload checks are a
    // second apart), so records produced from then on land under the new name.
    push_named(config, &key, "shape", &example_plugin("rename"))?;
    rig.agent(&site)
        .wait_for_log("version=2", Duration::from_secs(60))
        .map_err(|e| anyhow::anyhow!("{e:#}\n{}", rig.logs()))?;
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    client::send_all(&producer, &source, &batch(100)).await?;
    let moved = format!("{site}.{renamed}");
    let got =
        crate::common::read_seqs_by_key(k.central(), &moved, 100, Duration::from_secs(120)).await?;
    assert_eq!(got, (100..200).collect::<Vec<_>>(), "{}", rig.logs());
    // Asking for one more than there should be: nothing doubled, nothing more under the old name.
    let got =
        crate::common::read_seqs_by_key(k.central(), &up, 101, Duration::from_secs(10)).await?;
    assert_eq!(
        got,
        (0..100).collect::<Vec<_>>(),
        "nothing more under the old name"
    );

    // v3 keeps records again, pushed with a build precompiled for this agent's target: the
    // agent gets that build (native code, no compile on the box) and runs it.
    let native = rig.dir().join("identity.cwasm");
    let out = Command::new(replicator::bin("edge-agent")?)
        .args(["plugin", "compile"])
        .arg(example_plugin("identity"))
        .arg("-o")
        .arg(&native)
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let target = format!("{}-{}", std::env::consts::ARCH, std::env::consts::OS);
    let build = format!("{target}={}", native.display());
    push_with(
        config,
        &key,
        &["--native", &build],
        "shape",
        &example_plugin("identity"),
    )?;
    runs_native(&rig, &site, 3).await?;
    client::send_all(&producer, &source, &batch(200)).await?;
    let got =
        crate::common::read_seqs_by_key(k.central(), &up, 200, Duration::from_secs(120)).await?;
    let want: Vec<i64> = (0..100).chain(200..300).collect();
    assert_eq!(got, want, "{}", rig.logs());

    // v4 renames again, and the hub itself precompiles it for this target (`--target`, the
    // way it builds for agents without a compiler): the agent installs that build and runs it.
    let out = push_with(
        config,
        &key,
        &["--target", &target],
        "shape",
        &example_plugin("rename"),
    )?;
    assert!(
        out.contains(&format!("native builds precompiled: {target}")),
        "{out}"
    );
    runs_native(&rig, &site, 4).await?;
    client::send_all(&producer, &source, &batch(300)).await?;
    let got =
        crate::common::read_seqs_by_key(k.central(), &moved, 200, Duration::from_secs(120)).await?;
    let want: Vec<i64> = (100..200).chain(300..400).collect();
    assert_eq!(got, want, "{}", rig.logs());

    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut status = hub_cli(&["plugins", "status", "--config", config])?;
    while !status
        .lines()
        .any(|l| l.starts_with(&site) && l.contains(&target) && l.contains("shape v4"))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "{site} runs shape v4:\n{status}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
        status = hub_cli(&["plugins", "status", "--config", config])?;
    }
    rig.agent_mut(&site).stop();
    client::delete_topics(k.edge(), &[&source]).await?;
    Ok(())
}

/// Waits until the agent of `site` installed `version` of the plugin `shape`, checks that it
/// installed a native build (ELF), and waits past the route's next reload check.
async fn runs_native(rig: &er_tests::rig::Rig, site: &str, version: u64) -> anyhow::Result<()> {
    rig.agent(site)
        .wait_for_log(&format!("version={version}"), Duration::from_secs(60))
        .map_err(|e| anyhow::anyhow!("{e:#}\n{}", rig.logs()))?;
    let installed = std::fs::read(rig.dir().join("hub-plugins").join("shape.wasm"))?;
    assert!(
        installed.starts_with(b"\x7fELF"),
        "v{version}: a precompiled build was installed"
    );
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    Ok(())
}

fn push_named(config: &str, key: &str, name: &str, wasm: &Path) -> anyhow::Result<String> {
    push_with(config, key, &[], name, wasm)
}

/// `hub plugins push` with options (`--native`, `--target`) before the name.
fn push_with(
    config: &str,
    key: &str,
    options: &[&str],
    name: &str,
    wasm: &Path,
) -> anyhow::Result<String> {
    let mut args = vec!["plugins", "push", "--config", config, "--key", key];
    args.extend_from_slice(options);
    args.extend([name, wasm.to_str().unwrap()]);
    hub_cli(&args)
}
