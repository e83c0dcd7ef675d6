//! The two brokers: started with the test harness, or attached to from the environment.
//!
//! To count what MirrorMaker 2 fetches from the edge, the edge broker gets a second listener
//! `MM2` whose advertised address is a port the bench's TCP proxy listens on: a client that
//! bootstraps through the proxy is told to connect to the proxy for every later request too.
//! Clients at the edge (preloader, agent) keep the plain listener.

use std::net::TcpListener;
use std::time::Duration;

use anyhow::{Context, Result};
use er_tests::kafka::KafkaNode;

/// The edge broker's extra listener for clients on the far side of the link.
#[derive(Debug, Clone, Copy)]
pub struct FarListener {
    /// Where the broker listens (the proxy's upstream).
    pub listen_port: u16,
    /// What the broker advertises (the proxy's own port).
    pub advertised_port: u16,
}

/// Edge and central clusters.
#[derive(Debug)]
pub struct Brokers {
    /// Edge bootstrap (plain listener).
    pub edge: String,
    /// Central bootstrap.
    pub central: String,
    /// The far-side listener, when the edge broker is ours.
    pub far: Option<FarListener>,
    /// True when attached to `ER_EDGE_BOOTSTRAP` / `ER_CENTRAL_BOOTSTRAP`.
    pub attached: bool,
    /// Kept for their lifetime: dropping a node stops its broker.
    _nodes: Vec<KafkaNode>,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Brokers {
    /// Attaches to the environment's brokers, or starts two; with `far_listener` the edge
    /// broker is restarted once with the extra listener.
    pub fn start(far_listener: bool) -> Result<Self> {
        if let (Some(edge), Some(central)) = (env("ER_EDGE_BOOTSTRAP"), env("ER_CENTRAL_BOOTSTRAP"))
        {
            return Ok(Self {
                edge,
                central,
                far: None,
                attached: true,
                _nodes: Vec::new(),
            });
        }
        eprintln!(
            "[er-bench] starting edge and central brokers (Kafka {})",
            er_tests::kafka::kafka_version()
        );
        let (edge, central) = std::thread::scope(|s| {
            let e = s.spawn(|| KafkaNode::start("bench-edge"));
            let c = s.spawn(|| KafkaNode::start("bench-central"));
            (e.join(), c.join())
        });
        let mut edge = edge.map_err(|_| anyhow::anyhow!("starting edge panicked"))??;
        let central = central.map_err(|_| anyhow::anyhow!("starting central panicked"))??;
        let far = if far_listener {
            let far = FarListener {
                listen_port: free_port()?,
                advertised_port: free_port()?,
            };
            add_far_listener(&mut edge, far)?;
            Some(far)
        } else {
            None
        };
        Ok(Self {
            edge: edge.bootstrap().to_owned(),
            central: central.bootstrap().to_owned(),
            far,
            attached: false,
            _nodes: vec![edge, central],
        })
    }
}

/// Stops the node, adds listener `MM2` to its server.properties, starts it again.
fn add_far_listener(node: &mut KafkaNode, far: FarListener) -> Result<()> {
    node.stop();
    let path = node.dir().join("server.properties");
    let text = std::fs::read_to_string(&path).context("reading server.properties")?;
    let mut out = String::new();
    for line in text.lines() {
        let edited = if let Some(v) = line.strip_prefix("listeners=") {
            format!("listeners={v},MM2://127.0.0.1:{}", far.listen_port)
        } else if let Some(v) = line.strip_prefix("advertised.listeners=") {
            format!(
                "advertised.listeners={v},MM2://127.0.0.1:{}",
                far.advertised_port
            )
        } else if let Some(v) = line.strip_prefix("listener.security.protocol.map=") {
            format!("listener.security.protocol.map={v},MM2:PLAINTEXT")
        } else {
            line.to_owned()
        };
        out.push_str(&edited);
        out.push('\n');
    }
    std::fs::write(&path, out)?;
    eprintln!(
        "[er-bench] edge broker: adding far-side listener on :{} (advertised :{})",
        far.listen_port, far.advertised_port
    );
    node.restart()
        .context("restarting the edge broker with the far-side listener")?;
    // The broker is registered; give the controller a moment to publish the new endpoints.
    std::thread::sleep(Duration::from_millis(500));
    Ok(())
}
