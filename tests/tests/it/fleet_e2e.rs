//! A fleet on one hub: hundreds of simulated sites (er_tests::fleet), each with its own
//! certificate and QUIC connection, against the real hub binary and real Kafka; the hub is
//! killed and started again on the same port in the middle, and every record of every site
//! must still arrive exactly once, in order per partition; idle, their heartbeats are paced.
//!
//! `ER_FLEET_SITES` changes the number of sites (default 200, as issue 11 asks of the suite).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use er_tests::fleet::{self, Fleet, FleetConfig};
use er_tests::replicator::{HubSetup, Pki, tail};

/// Records each site produces over the run.
const RECORDS_PER_SITE: u64 = 300;
/// Records per second per site: the run lasts about 25 s.
const RATE: f64 = 12.0;

fn sites_from_env() -> usize {
    std::env::var("ER_FLEET_SITES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_sites_on_one_hub_exactly_once_across_a_hub_kill() -> anyhow::Result<()> {
    let n = sites_from_env();
    let k = er_tests::kafka::shared();
    let work = tempfile::tempdir()?;
    let pki_dir = tempfile::tempdir()?;
    let prefix = format!("fl{:04x}", rand::random::<u16>());
    let sites = fleet::site_names(&prefix, n);
    fleet::issue_certs(pki_dir.path(), &sites)?;
    let pki = Pki::from_dir(pki_dir);
    let mut setup = HubSetup::new(k.central())?;
    let metrics_port = er_tests::prom::free_tcp_port();
    setup.extra = er_tests::prom::metrics_section(metrics_port);
    let mut hub = setup.start(&pki, work.path())?;
    let logs =
        |hub: &er_tests::replicator::Proc| format!("hub log:\n{}", tail(&hub.log_text(), 60));

    let hub_addr: SocketAddr = ([127, 0, 0, 1], setup.port).into();
    let mut cfg = FleetConfig::new(hub_addr, pki.dir(), sites);
    cfg.rate_per_site = RATE;
    cfg.max_records_per_site = Some(RECORDS_PER_SITE);
    cfg.group_interval = Some(Duration::from_secs(2));
    let started = Instant::now();
    let fleet = Fleet::start(cfg).await?;
    let welcomed = fleet
        .wait_until("every site welcomed", Duration::from_secs(60), |s| {
            s.ever_welcomed == s.sites
        })
        .await;
    if let Err(e) = welcomed {
        panic!("{e:#}\n{}", logs(&hub));
    }
    eprintln!(
        "{n} sites welcomed in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    // A third of the records committed, then the hub dies with transactions in flight.
    let total = n as u64 * RECORDS_PER_SITE;
    let third = fleet
        .wait_until(
            "a third of the records acked",
            Duration::from_secs(60),
            |s| s.records_acked >= total / 3,
        )
        .await;
    if let Err(e) = third {
        panic!("{e:#}\n{}", logs(&hub));
    }
    hub.kill();
    let killed = Instant::now();
    hub.restart()?;
    let flowing = fleet
        .wait_flowing_since(killed, Duration::from_secs(60))
        .await;
    match flowing {
        Ok(d) => eprintln!(
            "{n} sites flowing again {:.1} s after the hub kill",
            d.as_secs_f64()
        ),
        Err(e) => panic!("{e:#}\n{}", logs(&hub)),
    }
    let produced = fleet
        .wait_until(
            "every record produced and acked",
            Duration::from_secs(60),
            |s| s.records_generated == total && s.records_acked == total,
        )
        .await;
    if let Err(e) = produced {
        panic!("{e:#}\n{}", logs(&hub));
    }
    // Every site idles now but for its heartbeat every second: hundreds of heartbeats a second
    // are dozens of transactions if each writer commits them as they come (74 in 8 s with
    // `fleet.heartbeat_partitions_per_second = 0`). Paced, each writer holds them a couple of
    // seconds (13).
    let committed = || -> anyhow::Result<f64> {
        let m = er_tests::prom::parse(&er_tests::prom::scrape(metrics_port)?);
        Ok(er_tests::prom::value(&m, "er_hub_transaction_seconds_count", &[]).unwrap_or(0.0))
    };
    let (before, idle) = (committed()?, Duration::from_secs(8));
    tokio::time::sleep(idle).await;
    let transactions = committed()? - before;
    eprintln!("{transactions} transactions in {idle:?} of heartbeats alone");
    assert!(
        transactions <= 40.0,
        "{transactions} transactions in {idle:?} of {n} sites' heartbeats alone: not paced"
    );
    if let Err(e) = fleet.drain(Duration::from_secs(30)).await {
        panic!("{e:#}\n{}", logs(&hub));
    }
    let status = fleet.status();
    let outcomes = fleet.stop().await;
    assert_eq!(status.positions_ahead, 0, "{status:?}");
    assert!(
        status.link_losses >= n as u64,
        "every site lost its link to the killed hub: {status:?}"
    );
    assert!(
        status.heartbeats > 0 && status.group_reports > 0,
        "{status:?}"
    );

    let report =
        fleet::check_exactly_once(k.central(), "events", &outcomes, Duration::from_secs(60))
            .await?;
    eprintln!(
        "{} ({:.1} s in all)",
        report.summary(),
        started.elapsed().as_secs_f64()
    );
    assert_eq!(report.records_expected, total);
    assert!(report.is_exact(), "{}\n{}", report.summary(), logs(&hub));
    Ok(())
}
