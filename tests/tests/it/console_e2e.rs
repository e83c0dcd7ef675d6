//! The fleet at a glance, for real: a hub and two agents replicating from the real edge Kafka;
//! `hub status` and `edge-agent status` (table and `--json`) read their `/status`, a stopped site
//! sorts first as `down`, an unreachable endpoint gives a clear error; and the hub's web console
//! is loaded in a real headless chromium (Debian's `chromium`, installed by scripts/setup.sh):
//! it shows the sites, filters them, draws a site's sparklines and refreshes by itself.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use er_hub::fleet_status::{HubStatus, LinkState};
use er_tests::client::{self, NewRecord};
use er_tests::kafka::shared;
use er_tests::prom::{free_tcp_port, http_get, metrics_section};
use er_tests::replicator::bin;
use er_tests::rig::Rig;
use er_tests::unique_name;

/// Runs a binary of the workspace: (success, stdout, stderr).
fn run(binary: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(bin(binary).expect("binary"))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {binary} {args:?}: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn hub_status(url: &str) -> HubStatus {
    let (ok, out, err) = run("hub", &["status", "--url", url, "--json"]);
    assert!(ok, "hub status --json failed: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("hub status --json: {e}: {out}"))
}

/// Debian's chromium, if installed.
fn chromium() -> Option<PathBuf> {
    let paths = std::env::var_os("PATH")?;
    ["chromium", "chromium-browser"].iter().find_map(|name| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

/// The DOM of `url` after the page ran `budget_ms` of virtual time in headless chromium.
fn dump_dom(chromium: &std::path::Path, url: &str, budget_ms: u64) -> String {
    let profile = tempfile::tempdir().expect("profile dir");
    let out = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-extensions",
            "--disable-dev-shm-usage",
            &format!("--user-data-dir={}", profile.path().display()),
            &format!("--virtual-time-budget={budget_ms}"),
            "--dump-dom",
            url,
        ])
        .output()
        .expect("running chromium");
    let dom = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && dom.contains("</html>"),
        "chromium --dump-dom {url}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    dom
}

/// The value of `attr="..."` on the element whose opening tag contains `marker`.
fn attr(dom: &str, marker: &str, attr: &str) -> Option<String> {
    let at = dom.find(marker)?;
    let tag_start = dom[..at].rfind('<')?;
    let tag = &dom[tag_start..tag_start + dom[tag_start..].find('>')?];
    let key = format!("{attr}=\"");
    let from = tag.find(&key)? + key.len();
    Some(tag[from..from + tag[from..].find('"')?].to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn status_commands_and_the_console_show_a_running_fleet() -> anyhow::Result<()> {
    let k = shared();
    let sites = [unique_name("plant-a"), unique_name("plant-b")];
    let topic = unique_name("console-orders");
    const TOTAL: usize = 300;
    client::create_topic(k.edge(), &topic, 2, &[]).await?;
    let recs: Vec<NewRecord> = (0..TOTAL)
        .map(|i| NewRecord::new(format!("k{i}"), format!("order {i}")).partition((i % 2) as i32))
        .collect();
    client::produce(k.edge(), &topic, &recs).await?;

    let hub_http = free_tcp_port();
    // Both sites read the same edge topic (each is its own site to the hub); the first serves
    // its own status endpoint.
    let agent_http = free_tcp_port();
    let mut rig = Rig::builder()
        .hub(|h| h.extra.push_str(&metrics_section(hub_http)))
        .agent_with(&sites[0], &topic, |a| {
            a.extra.push_str(&metrics_section(agent_http));
        })
        .agent(&sites[1], &topic)
        .start()?;
    let hub_cfg = rig.hub_config();
    let hub_url = format!("http://127.0.0.1:{hub_http}");
    for site in &sites {
        let got = client::wait_for_count(
            k.central(),
            &format!("{site}.{topic}"),
            TOTAL,
            Duration::from_secs(120),
        )
        .await;
        assert_eq!(got.len(), TOTAL, "{site} replicated\n{}", rig.logs());
    }

    // `hub status --json`: both sites up, with RTT, records and heartbeat lag; history samples
    // accumulate (the console's sparklines need a few).
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        let s = hub_status(&hub_url);
        let detail_ready = {
            let (code, body) = http_get(hub_http, &format!("/status/{}", sites[0]))?;
            code == 200
                && serde_json::from_str::<serde_json::Value>(&body)?["history"]
                    .as_array()
                    .is_some_and(|h| h.len() >= 3)
        };
        let ready = s.sites.len() == 2
            && s.sites.iter().all(|r| {
                r.link == LinkState::Up
                    && r.rtt_ms.is_some()
                    && r.lag_seconds.is_some()
                    && r.records_per_second.is_some()
                    && r.records_written >= TOTAL as u64
                    && r.agent_report_age_seconds.is_some()
            })
            && s.sites
                .iter()
                .any(|r| r.site == sites[0] && r.lag_records == Some(0));
        if (ready && detail_ready) || Instant::now() > deadline {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(status.fleet_started, "{status:?}");
    assert_eq!(status.sites_connected, 2, "{status:?}");
    let mut names: Vec<&str> = status.sites.iter().map(|r| r.site.as_str()).collect();
    names.sort();
    assert_eq!(names, [sites[0].as_str(), sites[1].as_str()], "{status:?}");
    for r in &status.sites {
        assert_eq!(r.link, LinkState::Up, "{r:?}");
        assert!(r.rtt_ms.is_some_and(|v| v > 0.0 && v < 1_000.0), "{r:?}");
        assert!(r.records_written >= TOTAL as u64, "{r:?}");
        assert!(
            r.lag_seconds.is_some_and(|l| l.abs() < 60.0),
            "heartbeats committed: {r:?}"
        );
        assert!(
            r.last_heartbeat_age_seconds.is_some_and(|a| a < 60.0),
            "{r:?}"
        );
        assert!(r.records_per_second.is_some(), "{r:?}");
        assert!(
            r.certificate_expires_in_days.is_some_and(|d| d > 30.0),
            "dev certificates last long: {r:?}"
        );
        assert_eq!(r.poison_records, 0, "{r:?}");
        // The agents' own figures, from their SiteReports.
        assert!(
            r.agent_report_age_seconds.is_some_and(|a| a < 30.0),
            "{r:?}"
        );
        assert_eq!(
            (r.retention_gap_records, r.plugin_errors, r.route_stops),
            (Some(0), Some(0), Some(0)),
            "{r:?}"
        );
        assert_eq!(
            (r.health, r.problems.len()),
            (er_hub::fleet_status::Health::Ok, 0),
            "{r:?}"
        );
    }
    let lag_of = |site: &str| {
        status
            .sites
            .iter()
            .find(|r| r.site == site)
            .and_then(|r| r.lag_records)
    };
    // Caught up, but the site's heartbeats keep coming (one a second): a record or two may be
    // in flight at the moment the agent measured.
    let lag = lag_of(&sites[0]);
    assert!(
        lag.is_some_and(|l| l <= 5),
        "measured by the agent serving metrics, and small once caught up: {lag:?}"
    );
    assert_eq!(lag_of(&sites[1]), None, "not measured without [metrics]");

    // The table, from the config file's metrics address and from --url.
    let (ok, table, err) = run("hub", &["status", "--config", hub_cfg.to_str().unwrap()]);
    assert!(ok, "hub status --config: {err}");
    assert!(
        table.starts_with(&format!("hub {} ", rig.hub_setup().hub_id)),
        "{table}"
    );
    assert!(
        table.contains("SITE") && table.contains("WRITER"),
        "{table}"
    );
    for site in &sites {
        let row = table
            .lines()
            .find(|l| l.starts_with(site.as_str()))
            .unwrap_or_else(|| panic!("no row for {site}:\n{table}"));
        assert!(row.contains(" up "), "{row}");
    }

    // `edge-agent status`: the link, lanes and every partition of the topic with its lag.
    let agent_url = format!("http://127.0.0.1:{agent_http}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let agent_status = loop {
        let (ok, out, err) = run("edge-agent", &["status", "--url", &agent_url, "--json"]);
        assert!(ok, "edge-agent status --json: {err}");
        let s: edge_agent_status::AgentStatus = serde_json::from_str(&out)?;
        let lags = s
            .partitions
            .iter()
            .filter(|p| p.topic == topic && p.lag_records == Some(0))
            .count();
        if lags == 2 || Instant::now() > deadline {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(agent_status.site.as_deref(), Some(sites[0].as_str()));
    assert_eq!(
        agent_status.link.state,
        edge_agent_status::LinkState::Up,
        "{agent_status:?}"
    );
    assert!(agent_status.alarms.is_empty(), "{agent_status:?}");
    assert!(
        agent_status
            .lanes
            .iter()
            .any(|l| l.lane == "0" && l.partitions == 2),
        "{agent_status:?}"
    );
    let (ok, text, err) = run("edge-agent", &["status", "--url", &agent_url]);
    assert!(ok, "{err}");
    assert!(text.contains(&format!("site {} ", sites[0])), "{text}");
    assert!(text.contains("link Up for"), "{text}");
    assert!(text.contains("alarms: none"), "{text}");
    assert!(
        text.lines()
            .filter(|l| l.trim_start().starts_with(&topic))
            .count()
            == 2,
        "a line per partition:\n{text}"
    );

    // Nothing listening: a clear error, not a hang.
    let closed = free_tcp_port();
    let (ok, _, err) = run(
        "hub",
        &["status", "--url", &format!("http://127.0.0.1:{closed}")],
    );
    assert!(!ok);
    assert!(
        err.contains(&format!(
            "cannot reach hub status at http://127.0.0.1:{closed}/status: "
        )) && err.to_lowercase().contains("refused"),
        "{err}"
    );

    // The console in a real browser.
    match chromium() {
        None => eprintln!(
            "SKIPPED the console check: chromium is not installed (scripts/setup.sh installs \
             Debian's chromium); the status commands were checked"
        ),
        Some(chromium) => {
            // The fleet table with both sites, refreshing on its own (several /status reads
            // within the virtual time, each newer than the first).
            let dom = dump_dom(&chromium, &format!("{hub_url}/#site={}", sites[0]), 9_000);
            for site in &sites {
                assert!(
                    dom.contains(&format!("data-site=\"{site}\"")),
                    "the console lists {site}:\n{dom}"
                );
            }
            let refreshes: u32 = attr(&dom, "id=\"updated\"", "data-refreshes")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            assert!(
                refreshes >= 2,
                "the console refreshed {refreshes} times:\n{dom}"
            );
            let first: i64 = attr(&dom, "id=\"updated\"", "data-first-generated-ms")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let last: i64 = attr(&dom, "id=\"updated\"", "data-generated-ms")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            assert!(
                first > 0 && last > first,
                "newer data shown: {first} -> {last}"
            );
            assert!(
                dom.contains("1 critical") || dom.contains("0 critical"),
                "{dom}"
            );
            // The detail of the site named in the URL: sparklines drawn from its history.
            for spark in ["id=\"d-rate\"", "id=\"d-lag\""] {
                let points: usize = attr(&dom, spark, "data-points")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                assert!(points >= 2, "{spark} has {points} points:\n{dom}");
            }
            assert!(
                dom.contains(&format!("<h2 id=\"d-title\">{} (", sites[0])),
                "detail title:\n{dom}"
            );
            assert!(dom.contains("data-fact=\"plugin errors\""), "{dom}");
            // A filter in the URL leaves only the matching site.
            let dom = dump_dom(&chromium, &format!("{hub_url}/?filter={}", sites[1]), 3_000);
            assert!(
                dom.contains(&format!("data-site=\"{}\"", sites[1])),
                "{dom}"
            );
            assert!(
                !dom.contains(&format!("data-site=\"{}\"", sites[0])),
                "filtered:\n{dom}"
            );
            assert!(dom.contains("1 of 2 sites shown"), "{dom}");
        }
    }

    // A site that stops sorts first, as down and critical.
    rig.agent_mut(&sites[1]).stop();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        let s = hub_status(&hub_url);
        if s.sites.first().is_some_and(|r| r.link == LinkState::Down) || Instant::now() > deadline {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let worst = &status.sites[0];
    assert_eq!(
        (worst.site.as_str(), worst.link),
        (sites[1].as_str(), LinkState::Down),
        "{status:?}"
    );
    assert_eq!(worst.health, er_hub::fleet_status::Health::Critical);
    assert!(worst.problems.iter().any(|p| p == "link down"), "{worst:?}");
    let (ok, table, _) = run("hub", &["status", "--url", &hub_url]);
    assert!(ok);
    let rows: Vec<&str> = table.lines().filter(|l| l.starts_with("plant-")).collect();
    assert!(
        rows[0].starts_with(sites[1].as_str()) && rows[0].contains("down"),
        "{table}"
    );
    assert!(
        table.contains(&format!("{}: link down", sites[1])),
        "{table}"
    );
    drop(rig);
    Ok(())
}

/// The agent's `/status` types, as `edge-agent status --json` prints them.
mod edge_agent_status {
    pub use edge_agent::health::{AgentStatus, LinkState};
}
