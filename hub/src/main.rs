//! `hub`: the central side of edge-replicator.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio::sync::watch;

/// Accepts edge sites over QUIC and writes their records to central Kafka, exactly once.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Path of hub.toml.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Log format: `text` or `json`.
    #[arg(long, value_enum, default_value_t)]
    log_format: er_service::logging::LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Checks a config file and exits.
    CheckConfig {
        /// Path of hub.toml.
        config: PathBuf,
    },
    /// Shows a site's consumer-group checkpoints on the central clusters: for each destination
    /// partition, the group's offset at the edge (upstream) and where it resumes centrally
    /// (downstream). One JSON object per line.
    Checkpoints {
        /// Path of hub.toml (for the clusters).
        #[arg(long)]
        config: PathBuf,
        /// Site alias.
        #[arg(long)]
        site: String,
        /// Only this consumer group (all groups when omitted).
        #[arg(long)]
        group: Option<String>,
    },
    /// Prints the fleet a running hub serves, one row per site, worst first: link, RTT,
    /// records/s, lag (records and seconds), last heartbeat, retention gap, poison records,
    /// certificate expiry, writer state; then each site's problems. Reads the hub's `/status`.
    Status {
        /// hub.toml: the hub's `[metrics] listen` address is asked (loopback for a wildcard).
        #[arg(long, required_unless_present = "url", conflicts_with = "url")]
        config: Option<PathBuf>,
        /// The status endpoint, e.g. `http://hub-1:9465` (path `/status` by default).
        #[arg(long)]
        url: Option<String>,
        /// Print the `/status` JSON (schema: README, "Health and status endpoints").
        #[arg(long)]
        json: bool,
        /// Refresh every this many seconds until interrupted.
        #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
        watch: Option<u64>,
        /// Seconds to wait for the hub's answer.
        #[arg(long, default_value_t = 10)]
        timeout_s: u64,
    },
    /// Hub-distributed plugins: signing keys, pushes (with canaries), what sites run.
    Plugins {
        #[command(subcommand)]
        action: PluginsCommand,
    },
    /// Creates a development PKI: a CA, a hub certificate and one certificate per site.
    Certs {
        /// Directory to write PEM files into.
        #[arg(long, default_value = "certs")]
        out: PathBuf,
        /// Site aliases to issue client certificates for (repeatable).
        #[arg(long = "site", required = true)]
        sites: Vec<String>,
        /// DNS names or IP addresses the hub certificate is valid for (repeatable).
        #[arg(long = "hub-name", default_values = ["localhost", "127.0.0.1", "::1"])]
        hub_names: Vec<String>,
        /// Add site certificates to an existing CA in --out instead of creating a new PKI.
        #[arg(long)]
        add: bool,
        /// Revoke the --site certificates in --out: (re)writes --out/ca.crl.pem listing them and
        /// every certificate it already listed (for the hub's `tls.crl_files`).
        #[arg(long, conflicts_with = "add")]
        revoke: bool,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Subcommand)]
enum PluginsCommand {
    /// Writes a new Ed25519 signing key (mode 0600) and prints its public key, for the agents'
    /// `plugins.trusted_keys`.
    Keygen {
        /// The private key file to write.
        #[arg(long)]
        out: PathBuf,
        /// Overwrite an existing file.
        #[arg(long)]
        force: bool,
    },
    /// Signs a component and stores it as the next version of NAME; without --canary every
    /// site of --sites runs it, with --canary that share of them first, and the hubs promote or
    /// roll it back by its error and drop rates against the stable version (`[plugins]`).
    Push {
        /// Path of hub.toml (its first cluster holds the store).
        #[arg(long)]
        config: PathBuf,
        /// The signing key (`hub plugins keygen`).
        #[arg(long)]
        key: PathBuf,
        /// Whole-name regex of the sites that run it.
        #[arg(long, default_value = ".*")]
        sites: String,
        /// Percent of those sites that run it first.
        #[arg(long)]
        canary: Option<u8>,
        /// A build of the same component precompiled for agents of a target
        /// (`edge-agent plugin compile` on such a box), as `<arch>-<os>=<file>`, e.g.
        /// `aarch64-linux=filter.cwasm`; repeatable. Agents of that target get it instead of
        /// compiling; agents built without a compiler run only these.
        #[arg(long)]
        native: Vec<String>,
        /// An agent target (`<arch>-<os>`, e.g. `aarch64-linux`) the hub precompiles the
        /// component for; repeatable. Besides these, pushes precompile for `[plugins] targets`
        /// and for the targets of the compiler-less agents the store has seen among --sites.
        #[arg(long = "target")]
        targets: Vec<String>,
        /// Plugin name: what routes name with `hub = "<name>"`.
        name: String,
        /// The component (.wasm).
        wasm: PathBuf,
    },
    /// Prints each plugin's rollout and the versions sites run.
    Status {
        /// Path of hub.toml.
        #[arg(long)]
        config: PathBuf,
    },
    /// Precompiles a component for agents of a target, as `push` does, into a file: to look at
    /// or to try on such a box (`edge-agent plugin test --plugin FILE`).
    Compile {
        /// The agent target (`<arch>-<os>`, e.g. `aarch64-linux`).
        #[arg(long)]
        target: String,
        /// Output file.
        #[arg(short, long)]
        out: PathBuf,
        /// The component (.wasm).
        wasm: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    er_service::logging::init(cli.log_format);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hub: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Some(Command::CheckConfig { config }) => {
            er_hub::config::load(&config)?;
            println!("{}: ok", config.display());
            Ok(())
        }
        Some(Command::Checkpoints {
            config,
            site,
            group,
        }) => print_checkpoints(&config, &site, group.as_deref()),
        Some(Command::Status {
            config,
            url,
            json,
            watch,
            timeout_s,
        }) => er_net::status_client::run_status_command(
            "hub status",
            "hub.toml",
            er_net::status_client::StatusRequest {
                config,
                url,
                json,
                watch,
                timeout_s,
            },
            |path| Ok(er_hub::config::load(path)?.metrics_listen),
            er_hub::fleet_status::render_table,
        ),
        Some(Command::Plugins { action }) => plugins(action),
        Some(Command::Certs {
            out,
            sites,
            hub_names,
            add,
            revoke,
            force,
        }) => {
            let written = if revoke {
                vec![er_net::devcerts::revoke_sites(&out, &sites)?]
            } else if add {
                let mut all = Vec::new();
                for s in &sites {
                    all.extend(er_net::devcerts::add_site(&out, s, force)?);
                }
                all
            } else {
                er_net::devcerts::generate(&out, &hub_names, &sites, force)?
            };
            for p in written {
                println!("wrote {}", p.display());
            }
            Ok(())
        }
        None => {
            let Some(path) = cli.config else {
                anyhow::bail!("--config <hub.toml> is required (see --help)");
            };
            serve(er_hub::config::load(&path)?)
        }
    }
}

/// `hub plugins ...`.
fn plugins(action: PluginsCommand) -> anyhow::Result<()> {
    use er_hub::plugins::cli;
    match action {
        PluginsCommand::Keygen { out, force } => {
            let public = cli::keygen(&out, force)?;
            println!(
                "wrote {}\npublic key (for the agents' plugins.trusted_keys): {public}",
                out.display()
            );
        }
        PluginsCommand::Push {
            config,
            key,
            sites,
            canary,
            native,
            targets,
            name,
            wasm,
        } => {
            let rt = tokio::runtime::Runtime::new()?;
            let pushed = rt.block_on(cli::push(cli::PushArgs {
                config: &config,
                key: &key,
                name: &name,
                wasm: &wasm,
                sites: &sites,
                canary,
                native: &native,
                targets: &targets,
            }))?;
            let version = pushed.version;
            match canary {
                Some(c) => println!(
                    "pushed {name} v{version}: canary on {c}% of the sites matching {sites:?}"
                ),
                None => println!("pushed {name} v{version} to the sites matching {sites:?}"),
            }
            for (how, targets) in [("precompiled", &pushed.compiled), ("given", &pushed.given)] {
                if !targets.is_empty() {
                    println!("native builds {how}: {}", targets.join(", "));
                }
            }
        }
        PluginsCommand::Status { config } => print!("{}", cli::status(&config)?),
        PluginsCommand::Compile { target, out, wasm } => {
            let bytes = cli::compile(&wasm, &target)?;
            std::fs::write(&out, &bytes)
                .map_err(|e| anyhow::anyhow!("writing {}: {e}", out.display()))?;
            println!(
                "wrote {} ({} bytes, for {target})",
                out.display(),
                bytes.len()
            );
        }
    }
    Ok(())
}

/// `hub checkpoints`: the site's checkpoints on every cluster, a JSON object per line.
fn print_checkpoints(
    config: &std::path::Path,
    site: &str,
    group: Option<&str>,
) -> anyhow::Result<()> {
    let cfg = er_hub::config::load(config)?;
    let topic = er_protocol::checkpoints_topic(site);
    for cluster in &cfg.raw.clusters {
        let found = er_hub::checkpoints::read_checkpoints(cluster, &topic, site)?;
        let mut rows: Vec<_> = found
            .into_iter()
            .filter(|((g, _), _)| group.is_none_or(|want| want == g))
            .collect();
        rows.sort();
        for ((g, tp), (upstream, downstream)) in rows {
            println!(
                "{}",
                serde_json::json!({
                    "cluster": cluster.alias,
                    "group": g,
                    "topic": tp.topic,
                    "partition": tp.partition,
                    "upstream_offset": upstream,
                    "downstream_offset": downstream,
                })
            );
        }
    }
    Ok(())
}

/// The hub itself: metrics and status endpoints if configured, the listener, and a clean stop
/// on SIGTERM or Ctrl-C.
fn serve(config: er_hub::config::Validated) -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let health = match config.metrics_listen {
            Some(addr) => {
                let endpoints = er_hub::metrics::install(addr)?;
                let health = er_hub::health::HubHealth::new(&config)?;
                let console = config.raw.metrics.console;
                health.register(&endpoints, console);
                tracing::info!(%addr, console, "serving /metrics, /healthz, /readyz and /status");
                Some(health)
            }
            None => None,
        };
        let mut bound = er_hub::BoundHub::bind(config)?;
        if let Some(h) = &health {
            h.listening(bound.local_addr()?);
            bound = bound.with_health(h.clone());
        }
        let (tx, rx) = watch::channel(false);
        tokio::spawn(async move {
            er_service::shutdown::signal().await;
            if let Some(h) = &health {
                h.stopping();
            }
            let _ = tx.send(true);
        });
        bound.serve(rx).await
    })
}
