//! The agent's hub addresses against real QUIC endpoints: it follows a hub's redirect to the hub
//! that serves its site, and walks past a dead address in its list to a live one. The fake hubs
//! are er-net server endpoints driving `er_protocol::HubConn`; no Kafka is needed to be welcomed.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use edge_agent::Stats;
use er_net::devcerts::{self, DevPki};
use er_net::wire::{FrameReader, FrameWriter};
use er_protocol::{Channel, Frame, HubConn, HubConnConfig, HubEvent};
use tokio::sync::{mpsc, watch};

const SITE: &str = "plant-7";
/// The nonce of the fake hub's ping after its welcome.
const PING_NONCE: u64 = 7_777;

/// How a fake hub answers a Hello.
#[derive(Clone)]
enum Answer {
    Redirect(Vec<String>),
    Welcome,
}

/// What a fake hub saw on one connection.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    /// A Hello from `site`, answered as configured.
    Hello { site: String },
    /// After the welcome, the agent answered the hub's ping: it took the welcome and kept the
    /// session (it would have sent an Error and closed instead).
    SessionKept,
    /// The agent sent an Error frame.
    AgentError(String),
}

/// A hub endpoint on loopback answering every Hello with `answer`; reports what it sees.
fn fake_hub(
    pki: &DevPki,
    answer: Answer,
) -> Result<(quinn::Endpoint, mpsc::UnboundedReceiver<Seen>)> {
    let endpoint = er_net::server_endpoint(
        "127.0.0.1:0".parse()?,
        &pki.hub_tls(),
        &er_net::TransportTuning::default(),
    )?;
    let (tx, rx) = mpsc::unbounded_channel();
    let ep = endpoint.clone();
    tokio::spawn(async move {
        while let Some(incoming) = ep.accept().await {
            let (tx, answer) = (tx.clone(), answer.clone());
            tokio::spawn(async move {
                if let Err(e) = serve(incoming, answer, &tx).await {
                    eprintln!("fake hub connection: {e:#}");
                }
            });
        }
    });
    Ok((endpoint, rx))
}

async fn serve(
    incoming: quinn::Incoming,
    answer: Answer,
    seen: &mpsc::UnboundedSender<Seen>,
) -> Result<()> {
    let conn = incoming.await?;
    let site = er_net::peer_site_alias(&conn)?;
    let (send, recv) = conn.accept_bi().await?;
    let (mut writer, mut reader) = (FrameWriter::new(send), FrameReader::new(recv, 1 << 20));
    let mut hub = HubConn::new(
        HubConnConfig {
            hub_id: "fake".into(),
            max_batch_bytes: 1 << 20,
            max_uncompressed_bytes: 4 << 20,
        },
        site,
        Instant::now(),
    );
    while let Some(frame) = reader.next().await? {
        if let Frame::Error { message, .. } = &frame {
            let _ = seen.send(Seen::AgentError(message.clone()));
        }
        // The answer to our ping below (HubConn sends none of its own).
        if let Frame::Pong {
            nonce: PING_NONCE, ..
        } = frame
        {
            let _ = seen.send(Seen::SessionKept);
            continue;
        }
        hub.handle_frame(Instant::now(), &Channel::Control, frame)?;
        let mut welcomed = false;
        while let Some(ev) = hub.poll_event() {
            if let HubEvent::Hello { site_claim, .. } = ev {
                let _ = seen.send(Seen::Hello { site: site_claim });
                match &answer {
                    Answer::Redirect(to) => hub.redirect(to.clone(), "not my shard".into())?,
                    Answer::Welcome => {
                        hub.welcome(vec![], "central".into())?;
                        welcomed = true;
                    }
                }
            }
        }
        while let Some((_, frame)) = hub.poll_transmit() {
            writer.write(&frame).await?;
        }
        if welcomed {
            writer
                .write(&Frame::Ping {
                    nonce: PING_NONCE,
                    sent_at_micros: 0,
                })
                .await?;
        }
        if hub.is_closed() {
            // The agent closes once it read the redirect.
            writer.finish();
            let _ = tokio::time::timeout(Duration::from_secs(5), conn.closed()).await;
            return Ok(());
        }
    }
    Ok(())
}

/// An agent config dialling `addresses` (TOML array items), with dev certificates in `dir`
/// and no Kafka work before the welcome.
fn agent_config(dir: &Path, addresses: &[String]) -> Result<edge_agent::config::Settings> {
    let list: Vec<String> = addresses.iter().map(|a| format!("{a:?}")).collect();
    let text = format!(
        "site = \"{SITE}\"\n\
         [kafka]\nbootstrap_servers = \"127.0.0.1:9\"\n\
         [hub]\naddress = [{}]\nca_cert = \"ca.pem\"\ncert = \"{SITE}.pem\"\nkey = \"{SITE}.key\"\n\
         connect_timeout_ms = 1000\nprobe_interval_ms = 200\n\
         reconnect_backoff_min_ms = 100\nreconnect_backoff_max_ms = 500\n\
         [heartbeats]\nenabled = false\n[groups]\ninterval_ms = 0\n",
        list.join(", ")
    );
    let path = dir.join("agent.toml");
    std::fs::write(&path, text)?;
    Ok(edge_agent::config::load(&path)?)
}

fn pki() -> Result<(tempfile::TempDir, DevPki)> {
    let dir = tempfile::tempdir()?;
    devcerts::generate(dir.path(), &[], &[SITE.into()], false)?;
    let pki = DevPki::new(dir.path());
    Ok((dir, pki))
}

fn addr(endpoint: &quinn::Endpoint) -> Result<String> {
    Ok(endpoint.local_addr()?.to_string())
}

/// The next thing `hub` saw, within `within`.
async fn next(rx: &mut mpsc::UnboundedReceiver<Seen>, hub: &str, within: Duration) -> Result<Seen> {
    tokio::time::timeout(within, rx.recv())
        .await
        .with_context(|| format!("{hub} saw nothing within {within:?}"))?
        .with_context(|| format!("{hub} stopped"))
}

/// After a welcome, the agent answered the hub's ping: it took the welcome.
async fn welcome_taken(rx: &mut mpsc::UnboundedReceiver<Seen>, hub: &str) -> Result<()> {
    match next(rx, hub, Duration::from_secs(5)).await? {
        Seen::SessionKept => Ok(()),
        other => bail!("{hub}: the agent did not take the welcome: {other:?}"),
    }
}

/// Runs `test` on a runtime of its own that, when done, does not wait for blocking work left
/// behind (once welcomed, the agent asks the absent edge Kafka for topics, for 10 s).
fn run_test(test: impl Future<Output = Result<()>>) -> Result<()> {
    // The agent's log goes with the test's output (shown when it fails).
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "edge_agent=debug".into()),
        )
        .with_test_writer()
        .try_init();
    let rt = tokio::runtime::Runtime::new()?;
    let result = rt.block_on(test);
    rt.shutdown_timeout(Duration::from_millis(100));
    result
}

/// Runs the agent until `check` is done, then shuts it down and checks it stopped cleanly.
async fn with_agent<F, Fut>(cfg: edge_agent::config::Settings, check: F) -> Result<()>
where
    F: FnOnce(Arc<Stats>) -> Fut,
    Fut: Future<Output = Result<()>>,
{
    let stats = Arc::new(Stats::default());
    let (stop, stopped) = watch::channel(false);
    let agent = tokio::spawn(edge_agent::run(cfg, stats.clone(), stopped));
    let checked = check(stats).await;
    stop.send(true)?;
    tokio::time::timeout(Duration::from_secs(10), agent)
        .await
        .context("the agent did not stop")???;
    checked
}

#[test]
fn a_redirected_agent_is_welcomed_by_the_hub_it_was_sent_to() -> Result<()> {
    run_test(redirected())
}

async fn redirected() -> Result<()> {
    let (dir, pki) = pki()?;
    let (owner, mut owner_seen) = fake_hub(&pki, Answer::Welcome)?;
    let (other, mut other_seen) = fake_hub(&pki, Answer::Redirect(vec![addr(&owner)?]))?;
    // The agent knows only the hub that does not serve its site; server names default to the
    // host of the address dialled (the dev hub certificate carries 127.0.0.1).
    let cfg = agent_config(dir.path(), &[addr(&other)?])?;
    with_agent(cfg, |stats| async move {
        let site = SITE.to_owned();
        let s = Duration::from_secs(10);
        assert_eq!(
            next(&mut other_seen, "other", s).await?,
            Seen::Hello { site: site.clone() }
        );
        assert_eq!(
            next(&mut owner_seen, "owner", s).await?,
            Seen::Hello { site }
        );
        welcome_taken(&mut owner_seen, "owner").await?;
        assert_eq!(stats.redirects.load(Ordering::Relaxed), 1);
        assert!(
            other_seen.try_recv().is_err(),
            "the agent did not go back to the hub that redirected it"
        );
        Ok(())
    })
    .await
}

#[test]
fn an_agent_walks_past_a_dead_address_to_a_live_hub() -> Result<()> {
    run_test(walks_past_a_dead_address())
}

async fn walks_past_a_dead_address() -> Result<()> {
    let (dir, pki) = pki()?;
    let (hub, mut seen) = fake_hub(&pki, Answer::Welcome)?;
    // A port nobody listens on: the attempt gets no answer at all.
    let dead: SocketAddr = std::net::UdpSocket::bind("127.0.0.1:0")?.local_addr()?;
    let cfg = agent_config(dir.path(), &[dead.to_string(), addr(&hub)?])?;
    let started = Instant::now();
    with_agent(cfg, |stats| async move {
        let s = Duration::from_secs(10);
        match next(&mut seen, "hub", s).await? {
            Seen::Hello { site } if site == SITE => {}
            other => bail!("expected a hello from {SITE}, got {other:?}"),
        }
        // The dead address went first and had the whole answer wait (the connect timeout, as
        // nothing worked before): a silent UDP port gives QUIC nothing to fail on sooner.
        assert!(
            started.elapsed() >= Duration::from_millis(900),
            "the live hub answered after {:?}: the dead address was not tried first",
            started.elapsed()
        );
        welcome_taken(&mut seen, "hub").await?;
        assert_eq!(stats.connects.load(Ordering::Relaxed), 1);
        assert_eq!(stats.redirects.load(Ordering::Relaxed), 0);
        Ok(())
    })
    .await
}
