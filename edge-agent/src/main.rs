//! `edge-agent`: the edge side of edge-replicator.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use tokio::sync::watch;

/// Mirrors local Kafka topics to an edge-replicator hub over QUIC.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Path of agent.toml.
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
        /// Path of agent.toml.
        config: PathBuf,
    },
    /// Prints a running agent's state: link, alarms, lanes, plugin counters and per-partition
    /// lag. Reads the agent's `/status`.
    Status {
        /// agent.toml: the agent's `[metrics] listen` address is asked (loopback for a
        /// wildcard).
        #[arg(long, required_unless_present = "url", conflicts_with = "url")]
        config: Option<PathBuf>,
        /// The status endpoint, e.g. `http://gw-7:9464` (path `/status` by default).
        #[arg(long)]
        url: Option<String>,
        /// Print the `/status` JSON (schema: README, "Health and status endpoints").
        #[arg(long)]
        json: bool,
        /// Refresh every this many seconds until interrupted.
        #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
        watch: Option<u64>,
        /// Seconds to wait for the agent's answer.
        #[arg(long, default_value_t = 10)]
        timeout_s: u64,
    },
    /// Plugin author tools (no Kafka needed).
    #[command(subcommand)]
    Plugin(PluginCommand),
}

#[derive(Debug, Subcommand)]
enum PluginCommand {
    /// Runs a plugin (or a chain, in the order given) over JSON-lines records and prints the
    /// outcomes as JSON lines. Record format: plugins/host/README.md.
    Test {
        /// A plugin component (.wasm); repeat for a chain.
        #[arg(long = "plugin", required = true)]
        plugins: Vec<PathBuf>,
        /// A plugin setting `KEY=VALUE` for the first plugin, or `N:KEY=VALUE` for plugin N
        /// (0-based); repeatable.
        #[arg(long = "set")]
        settings: Vec<String>,
        /// JSON-lines input file; `-` for standard input.
        #[arg(long, default_value = "-")]
        input: PathBuf,
        /// Records per plugin call.
        #[arg(long, default_value_t = 100)]
        batch_size: usize,
        /// Error policy: `stop` (the first failure ends the run), `skip`, `dead-letter` (topic
        /// `dead-letter`) or `dead-letter:<topic>`.
        #[arg(long, default_value = "stop", value_parser = parse_policy)]
        policy: er_plugin_host::ErrorPolicy,
        /// CPU deadline per plugin call in milliseconds.
        #[arg(long, default_value_t = 1000)]
        deadline_ms: u64,
    },
    /// Compiles a plugin (.wasm) into native code for agents of this version on this target,
    /// which load it without compiling; the only kind an agent built without the `compiler`
    /// feature runs. Write it where only the agent's user can (it is native code).
    Compile {
        /// The plugin component (.wasm).
        wasm: PathBuf,
        /// Where the precompiled plugin goes (by convention `.cwasm`).
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Writes a new plugin crate from the template: builds for wasm32-wasip2 against the SDK of
    /// this checkout, with unit tests and sample records for `plugin test`.
    New {
        /// Crate name (letters, digits, `-`, `_`; starts with a letter); also the directory name.
        name: String,
        /// Directory to create the crate in (as `<dir>/<name>`).
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// The SDK crate (`plugins/sdk` of an edge-replicator checkout) the plugin depends on;
        /// default: the one this agent was built from.
        #[arg(long)]
        sdk: Option<PathBuf>,
    },
}

/// The accepted spellings of `--policy`, for messages.
const POLICY_FORMS: &str = "stop, skip, dead-letter or dead-letter:<topic>";

/// Dead-letter topic of `--policy dead-letter` without a topic.
const DEFAULT_DEAD_LETTER_TOPIC: &str = "dead-letter";

/// Parses `--policy`.
fn parse_policy(s: &str) -> Result<er_plugin_host::ErrorPolicy, String> {
    use er_plugin_host::ErrorPolicy;
    match s {
        "stop" => Ok(ErrorPolicy::Stop),
        "skip" => Ok(ErrorPolicy::Skip),
        "dead-letter" => Ok(ErrorPolicy::DeadLetter {
            topic: DEFAULT_DEAD_LETTER_TOPIC.to_owned(),
        }),
        other => match other.strip_prefix("dead-letter:") {
            Some(topic) if !topic.is_empty() => Ok(ErrorPolicy::DeadLetter {
                topic: topic.to_owned(),
            }),
            _ => Err(format!(
                "{other:?} is not a policy; expected {POLICY_FORMS}"
            )),
        },
    }
}

/// Parses `KEY=VALUE` or `N:KEY=VALUE` into (plugin index, key, value).
fn parse_setting(s: &str, plugins: usize) -> anyhow::Result<(usize, String, String)> {
    let (index, kv) = match s.split_once(':') {
        Some((n, rest)) if n.chars().all(|c| c.is_ascii_digit()) && !n.is_empty() => {
            (n.parse::<usize>()?, rest)
        }
        _ => (0, s),
    };
    let (k, v) = kv
        .split_once('=')
        .ok_or_else(|| anyhow::anyhow!("--set {s:?}: expected KEY=VALUE or N:KEY=VALUE"))?;
    if index >= plugins {
        anyhow::bail!("--set {s:?}: there is no plugin {index} (plugins are numbered from 0)");
    }
    Ok((index, k.to_owned(), v.to_owned()))
}

fn plugin_command(cmd: PluginCommand) -> anyhow::Result<()> {
    match cmd {
        PluginCommand::Test {
            plugins,
            settings,
            input,
            batch_size,
            policy,
            deadline_ms,
        } => plugin_test(PluginTest {
            plugins,
            settings,
            input,
            batch_size,
            policy,
            deadline_ms,
        }),
        PluginCommand::Compile { wasm, output } => compile_plugin(&wasm, &output),
        PluginCommand::New { name, dir, sdk } => {
            let sdk = match sdk {
                Some(p) => p,
                None => er_plugin_host::template::sdk_dir(),
            };
            let made = er_plugin_host::template::write(&name, &dir, &sdk)?;
            let lib = name.replace('-', "_");
            println!("created plugin crate {name:?} in {}", made.display());
            println!("next:");
            println!("  cd {}", made.display());
            println!("  cargo test");
            println!("  cargo build --release --target wasm32-wasip2");
            println!(
                "  edge-agent plugin test --plugin target/wasm32-wasip2/release/{lib}.wasm --policy skip --input records.jsonl"
            );
            Ok(())
        }
    }
}

/// `plugin compile`: the precompiled plugin, written with this user's umask.
#[cfg(feature = "compiler")]
fn compile_plugin(wasm: &std::path::Path, output: &std::path::Path) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let artifact = er_plugin_host::precompile(wasm)?;
    std::fs::write(output, &artifact)
        .map_err(|e| anyhow::anyhow!("writing {}: {e}", output.display()))?;
    println!(
        "wrote {} ({} bytes, compiled in {} ms) for edge-agent {} on {}-{}",
        output.display(),
        artifact.len(),
        started.elapsed().as_millis(),
        env!("CARGO_PKG_VERSION"),
        std::env::consts::ARCH,
        std::env::consts::OS
    );
    Ok(())
}

#[cfg(not(feature = "compiler"))]
fn compile_plugin(_: &std::path::Path, _: &std::path::Path) -> anyhow::Result<()> {
    anyhow::bail!(
        "this edge-agent was built without the `compiler` feature: compile plugins with an edge-agent of the same version built with it (the default), for the same target"
    )
}

/// The arguments of `plugin test`.
struct PluginTest {
    plugins: Vec<PathBuf>,
    settings: Vec<String>,
    input: PathBuf,
    batch_size: usize,
    policy: er_plugin_host::ErrorPolicy,
    deadline_ms: u64,
}

fn plugin_test(cmd: PluginTest) -> anyhow::Result<()> {
    use std::io::{BufRead, BufReader};
    let PluginTest {
        plugins,
        settings,
        input,
        batch_size,
        policy,
        deadline_ms,
    } = cmd;
    let mut specs: Vec<er_plugin_host::PluginSpec> = plugins
        .iter()
        .map(|p| er_plugin_host::PluginSpec {
            path: p.clone(),
            config: Vec::new(),
        })
        .collect();
    for s in &settings {
        let (i, k, v) = parse_setting(s, specs.len())?;
        specs[i].config.push((k, v));
    }
    let host = er_plugin_host::PluginHost::new(er_plugin_host::HostConfig {
        batch_deadline: std::time::Duration::from_millis(deadline_ms),
        ..Default::default()
    })?;
    let mut chain = host.load_chain(&specs, policy)?;
    let reader: Box<dyn BufRead> = if input.as_os_str() == "-" {
        Box::new(BufReader::new(std::io::stdin()))
    } else {
        Box::new(BufReader::new(std::fs::File::open(&input).map_err(
            |e| anyhow::anyhow!("--input {}: {e}", input.display()),
        )?))
    };
    let result =
        er_plugin_host::run_jsonl(&mut chain, reader, std::io::stdout().lock(), batch_size);
    if let Ok(summary) = &result {
        eprintln!(
            "{} records in, {} out, {} dropped, {} failed",
            summary.records_in, summary.records_out, summary.dropped, summary.failed
        );
    }
    // Stats also after a stop: they say what ran before it.
    for st in chain.stats() {
        eprintln!("plugin {st}");
    }
    result?;
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    er_service::logging::init(cli.log_format);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("edge-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Some(Command::CheckConfig { config }) => {
            let cfg = edge_agent::config::load(&config)?;
            let pipeline = edge_agent::pipeline::Pipeline::load(&cfg)?;
            println!(
                "{}: ok ({} plugin routes loaded)",
                config.display(),
                pipeline.len()
            );
            Ok(())
        }
        Some(Command::Plugin(cmd)) => plugin_command(cmd),
        Some(Command::Status {
            config,
            url,
            json,
            watch,
            timeout_s,
        }) => er_net::status_client::run_status_command(
            "agent status",
            "agent.toml",
            er_net::status_client::StatusRequest {
                config,
                url,
                json,
                watch,
                timeout_s,
            },
            |path| Ok(edge_agent::config::load(path)?.metrics_listen),
            edge_agent::health::render,
        ),
        None => {
            let Some(path) = cli.config else {
                anyhow::bail!("--config <agent.toml> is required (see --help)");
            };
            let config = edge_agent::config::load(&path)?;
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(async move {
                if let Some(addr) = config.metrics_listen {
                    edge_agent::metrics::install(addr)?;
                    tracing::info!(%addr, "serving Prometheus metrics at /metrics");
                }
                let (tx, rx) = watch::channel(false);
                tokio::spawn(async move {
                    er_service::shutdown::signal().await;
                    let _ = tx.send(true);
                });
                let (reload_tx, reload_rx) = tokio::sync::mpsc::channel(1);
                let mut hup =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
                tokio::spawn(async move {
                    while hup.recv().await.is_some() {
                        // One pending reload is enough: it reads the file as it is then.
                        let _ = reload_tx.try_send(());
                    }
                });
                edge_agent::run_reloading(path, config, Arc::default(), rx, reload_rx).await
            })
        }
    }
}
