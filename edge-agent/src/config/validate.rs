//! From the serde [`schema`](super::schema) to [`Settings`]: one validator per table, each
//! naming the file and the field of what it refuses.

use std::time::Duration;

use er_service::config::{Checks, ConfigError, End::Field, End::Fixed};

use super::schema::{
    AgentConfig, BatchingConfig, Compression, DownlinkConfig, GroupsConfig, HeartbeatsConfig,
    HubLinkConfig, KafkaConfig, OnError, PluginLimitsConfig, RouteConfig, TopicsConfig,
};
use super::{
    BatchSettings, DownlinkSettings, GroupSettings, HubPluginSettings, HubSettings, KafkaSettings,
    PluginSettings, Settings, TopicSettings,
};
use crate::hubs::HubAddress;
use crate::routes::{Route, Routes};

/// Lowest accepted `hub.max_bytes_per_sec`: below it a typical batch would take minutes, most
/// likely a unit mistake.
const MIN_BYTES_PER_SEC: u64 = 1024;

/// Every table of the file, checked.
pub(super) fn settings(c: Checks<'_>, raw: AgentConfig) -> Result<Settings, ConfigError> {
    let kafka = kafka(c, raw.kafka)?;
    let topics = topics(c, raw.topics)?;
    let hub = hub(c, raw.hub)?;
    let batching = batching(c, raw.batching)?;
    let heartbeats = heartbeats(c, raw.heartbeats)?;
    let groups = groups(c, raw.groups)?;
    let downlink = downlink(c, raw.downlink)?;
    let limits = plugin_limits(c, &raw.plugins)?;
    let hub_dir = c.absolute(&raw.plugins.hub_dir);
    let routes = routes(c, raw.routes, limits, &hub_dir)?;
    let plugins = plugins(c, raw.plugins, &routes, hub_dir)?;
    let metrics_listen = c.metrics_listen("metrics.listen", raw.metrics.listen.as_deref())?;
    Ok(Settings {
        site: raw.site,
        kafka,
        topics,
        hub,
        batching,
        heartbeats,
        groups,
        downlink,
        plugins,
        routes,
        metrics_listen,
    })
}

fn ms(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

fn kafka(c: Checks<'_>, k: KafkaConfig) -> Result<KafkaSettings, ConfigError> {
    c.not_blank("kafka.bootstrap_servers", &k.bootstrap_servers)?;
    Ok(KafkaSettings {
        bootstrap_servers: k.bootstrap_servers,
        isolation_level: k.isolation_level,
        properties: k.properties,
    })
}

fn topics(c: Checks<'_>, t: TopicsConfig) -> Result<TopicSettings, ConfigError> {
    let include = c.whole_matches("topics.include", &t.include)?;
    let exclude = c.whole_matches("topics.exclude", &t.exclude)?;
    c.at_least(
        "topics.refresh_interval_ms",
        t.refresh_interval_ms,
        Fixed(1),
    )?;
    c.at_least(
        "topics.metadata_interval_ms",
        t.metadata_interval_ms,
        Fixed(1000),
    )?;
    Ok(TopicSettings {
        include,
        exclude,
        refresh_interval: ms(t.refresh_interval_ms),
        sync_metadata: t.sync_metadata,
        metadata_interval: ms(t.metadata_interval_ms),
        sync_acls: t.sync_acls,
    })
}

fn hub(c: Checks<'_>, h: HubLinkConfig) -> Result<HubSettings, ConfigError> {
    let tls = er_net::TlsFiles {
        ca_cert: c.existing_file("hub.ca_cert", &h.ca_cert)?,
        cert: c.existing_file("hub.cert", &h.cert)?,
        key: c.existing_file("hub.key", &h.key)?,
    };
    let fields = h.address.fields();
    if fields.is_empty() {
        return Err(c.invalid("hub.address", "must list at least one `host:port`"));
    }
    let mut addresses: Vec<HubAddress> = Vec::with_capacity(fields.len());
    for (field, text) in fields {
        let hub = HubAddress::parse(text).map_err(|m| c.invalid(&field, m))?;
        if let Some(j) = addresses.iter().position(|h| *h == hub) {
            return Err(c.invalid(
                &field,
                format!("{text:?} is listed twice (also hub.address[{j}])"),
            ));
        }
        addresses.push(hub);
    }
    if h.server_name.as_deref().is_some_and(str::is_empty) {
        return Err(c.invalid("hub.server_name", "must not be empty"));
    }
    c.within(
        "hub.reconnect_backoff_min_ms",
        h.reconnect_backoff_min_ms,
        Fixed(1),
        Field("reconnect_backoff_max_ms", h.reconnect_backoff_max_ms),
    )?;
    c.within(
        "hub.probe_interval_ms",
        h.probe_interval_ms,
        Fixed(1),
        Field("connect_timeout_ms", h.connect_timeout_ms),
    )?;
    if let Some(rate) = h.max_bytes_per_sec {
        c.at_least("hub.max_bytes_per_sec", rate, Fixed(MIN_BYTES_PER_SEC))
            .map_err(|e| e.explained("bytes, not bits, per second; leave it unset for no limit"))?;
    }
    Ok(HubSettings {
        addresses,
        server_name: h.server_name,
        tls,
        connect_timeout: ms(h.connect_timeout_ms),
        reconnect_backoff_min: ms(h.reconnect_backoff_min_ms),
        reconnect_backoff_max: ms(h.reconnect_backoff_max_ms),
        max_bytes_per_sec: h.max_bytes_per_sec,
        probe_interval: ms(h.probe_interval_ms),
    })
}

fn batching(c: Checks<'_>, b: BatchingConfig) -> Result<BatchSettings, ConfigError> {
    c.at_least("batching.max_records", b.max_records, Fixed(1))?;
    c.at_least("batching.max_bytes", b.max_bytes, Fixed(1024))?;
    c.within("batching.zstd_level", b.zstd_level, Fixed(1), Fixed(22))?;
    c.at_least(
        "batching.max_inflight_bytes_per_partition",
        b.max_inflight_bytes_per_partition,
        Fixed(1),
    )?;
    c.at_least(
        "batching.max_inflight_bytes_total",
        b.max_inflight_bytes_total,
        Field(
            "max_inflight_bytes_per_partition",
            b.max_inflight_bytes_per_partition,
        ),
    )?;
    const MIB: u64 = 1024 * 1024;
    let prefetch = match b.prefetch_bytes {
        Some(p) => {
            c.within("batching.prefetch_bytes", p, Fixed(MIB), Fixed(1024 * MIB))?;
            p
        }
        // Half the in-flight budget, at most librdkafka's 16 MiB: in the 1k bench a smaller
        // read-ahead cost throughput far more than it saved memory (BENCHMARKS.md).
        None => (b.max_inflight_bytes_total / 2).clamp(MIB, 16 * MIB),
    };
    Ok(BatchSettings {
        prefetch_kbytes: (prefetch / 1024) as usize,
        max_records: b.max_records,
        max_bytes: b.max_bytes,
        linger: ms(b.linger_ms),
        codec: match b.compression {
            Compression::Zstd => er_protocol::Codec::Zstd,
            Compression::None => er_protocol::Codec::None,
        },
        zstd_level: b.zstd_level,
        max_inflight_bytes_per_partition: b.max_inflight_bytes_per_partition,
        max_inflight_bytes_total: b.max_inflight_bytes_total,
    })
}

fn heartbeats(c: Checks<'_>, h: HeartbeatsConfig) -> Result<Option<Duration>, ConfigError> {
    c.at_least("heartbeats.interval_ms", h.interval_ms, Fixed(1))?;
    Ok(h.enabled.then(|| ms(h.interval_ms)))
}

fn downlink(c: Checks<'_>, d: DownlinkConfig) -> Result<Option<DownlinkSettings>, ConfigError> {
    c.not_blank("downlink.group", &d.group)?;
    c.at_least(
        "downlink.max_pending_bytes",
        d.max_pending_bytes,
        Fixed(1024 * 1024),
    )?;
    Ok(d.enabled.then_some(DownlinkSettings {
        group: d.group,
        max_pending_bytes: d.max_pending_bytes,
    }))
}

fn groups(c: Checks<'_>, g: GroupsConfig) -> Result<GroupSettings, ConfigError> {
    Ok(GroupSettings {
        include: c.whole_matches("groups.include", &g.include)?,
        exclude: c.whole_matches("groups.exclude", &g.exclude)?,
        interval: (g.interval_ms > 0).then(|| ms(g.interval_ms)),
    })
}

/// The `[plugins]` limits, checked; they are every route's output limits unless it sets its own.
fn plugin_limits(
    c: Checks<'_>,
    p: &PluginLimitsConfig,
) -> Result<er_plugin_host::OutputLimits, ConfigError> {
    c.within(
        "plugins.memory_limit_mb",
        p.memory_limit_mb,
        Fixed(1),
        Fixed(4096),
    )?;
    c.at_least("plugins.batch_deadline_ms", p.batch_deadline_ms, Fixed(1))?;
    c.at_least(
        "plugins.max_outputs_per_input",
        p.max_outputs_per_input,
        Fixed(1),
    )?;
    c.at_least(
        "plugins.max_output_bytes_per_input",
        p.max_output_bytes_per_input,
        Fixed(1),
    )?;
    c.at_least(
        "plugins.max_output_bytes_per_batch",
        p.max_output_bytes_per_batch,
        Fixed(1),
    )?;
    c.at_least(
        "plugins.stopped_route_retry_ms",
        p.stopped_route_retry_ms,
        Fixed(1),
    )?;
    Ok(er_plugin_host::OutputLimits {
        max_outputs_per_input: p.max_outputs_per_input,
        max_bytes_per_input: p.max_output_bytes_per_input,
        max_bytes_per_batch: p.max_output_bytes_per_batch,
    })
}

/// The plugin host's settings; sized by the plugins of every route.
fn plugins(
    c: Checks<'_>,
    p: PluginLimitsConfig,
    routes: &Routes,
    hub_dir: std::path::PathBuf,
) -> Result<PluginSettings, ConfigError> {
    let plugins = routes.plugin_count();
    let names = routes.hub_plugins();
    let mut trusted = Vec::with_capacity(p.trusted_keys.len());
    for (i, k) in p.trusted_keys.iter().enumerate() {
        let key = er_net::signing::parse_public_key(k)
            .map_err(|e| c.invalid(&format!("plugins.trusted_keys[{i}]"), e.to_string()))?;
        trusted.push(key);
    }
    if !names.is_empty() && trusted.is_empty() {
        return Err(c.invalid(
            "plugins.trusted_keys",
            "must list at least one key: routes name plugins from the hub (`hub = ...`), which run only when signed by a trusted key",
        ));
    }
    let hub = (!names.is_empty()).then_some(HubPluginSettings {
        dir: hub_dir,
        trusted,
        names,
    });
    Ok(PluginSettings {
        host: er_plugin_host::HostConfig {
            memory_limit_bytes: (p.memory_limit_mb as usize) << 20,
            batch_deadline: ms(p.batch_deadline_ms),
            max_outputs_per_input: p.max_outputs_per_input,
            max_output_bytes_per_input: p.max_output_bytes_per_input,
            max_output_bytes_per_batch: p.max_output_bytes_per_batch,
            cache_dir: p.cache_dir.as_deref().map(|d| c.absolute(d)),
            // Every plugin holds a slot, a reload briefly two; a new session's reader reuses them.
            max_instances: (plugins as u32 * 2 + 2).max(4),
        },
        stopped_route_retry: ms(p.stopped_route_retry_ms),
        hub,
    })
}

fn routes(
    c: Checks<'_>,
    raw: Vec<RouteConfig>,
    limits: er_plugin_host::OutputLimits,
    hub_dir: &std::path::Path,
) -> Result<Routes, ConfigError> {
    let mut routes = Vec::with_capacity(raw.len());
    for (i, r) in raw.into_iter().enumerate() {
        routes.push(route(c, i, r, limits, hub_dir)?);
    }
    Ok(routes.into())
}

fn route(
    c: Checks<'_>,
    i: usize,
    r: RouteConfig,
    limits: er_plugin_host::OutputLimits,
    hub_dir: &std::path::Path,
) -> Result<Route, ConfigError> {
    let field = |f: &str| format!("routes[{i}].{f}");
    if r.topics.is_empty() {
        return Err(c.invalid(&field("topics"), "must list at least one regex"));
    }
    let topics = c.whole_matches(&field("topics"), &r.topics)?;
    let policy = error_policy(c, &field, r.on_error, r.dead_letter_topic)?;
    let mut plugins = Vec::with_capacity(r.plugins.len());
    let mut hub_names = Vec::new();
    for (j, pc) in r.plugins.into_iter().enumerate() {
        let config = plugin_settings(&pc.config)
            .map_err(|(key, m)| c.invalid(&field(&format!("plugins[{j}].config.{key}")), m))?;
        let path = match (&pc.path, &pc.hub) {
            (Some(path), None) => c.absolute(path),
            (None, Some(name)) => {
                er_protocol::check_plugin_name(name).map_err(|m| {
                    c.invalid(
                        &field(&format!("plugins[{j}].hub")),
                        format!("{name:?} {m}"),
                    )
                })?;
                hub_dir.join(format!("{name}.wasm"))
            }
            _ => {
                return Err(c.invalid(
                    &field(&format!("plugins[{j}]")),
                    "needs exactly one of `path` (a local file) and `hub` (a plugin the hub distributes)",
                ));
            }
        };
        plugins.push(er_plugin_host::PluginSpec { path, config });
        if let Some(name) = pc.hub {
            hub_names.push(name);
        }
    }
    let mut output_limits = limits;
    if let Some(n) = r.max_output_bytes_per_input {
        c.at_least(&field("max_output_bytes_per_input"), n, Fixed(1))?;
        output_limits.max_bytes_per_input = n;
    }
    if let Some(n) = r.max_output_bytes_per_batch {
        c.at_least(&field("max_output_bytes_per_batch"), n, Fixed(1))?;
        output_limits.max_bytes_per_batch = n;
    }
    Ok(Route {
        name: r.name.unwrap_or_else(|| format!("route-{i}")),
        topics,
        priority: r.priority,
        plugins,
        policy,
        output_limits,
        hub_plugins: hub_names,
    })
}

/// A route's `on_error` with its `dead_letter_topic`, which only `dead-letter` takes and needs.
fn error_policy(
    c: Checks<'_>,
    field: &dyn Fn(&str) -> String,
    on_error: OnError,
    dead_letter_topic: Option<String>,
) -> Result<er_plugin_host::ErrorPolicy, ConfigError> {
    let dlq = field("dead_letter_topic");
    match (on_error, dead_letter_topic) {
        (OnError::Stop, None) => Ok(er_plugin_host::ErrorPolicy::Stop),
        (OnError::Skip, None) => Ok(er_plugin_host::ErrorPolicy::Skip),
        (OnError::DeadLetter, Some(t)) => {
            er_protocol::validate_topic_name(&t).map_err(|e| c.invalid(&dlq, e.to_string()))?;
            if er_protocol::is_internal_topic(&t) {
                return Err(c.invalid(
                    &dlq,
                    format!("{t:?} is an internal topic name and would never be replicated"),
                ));
            }
            if er_protocol::policy::PROTECTED_TOPICS.contains(&t.as_str()) {
                return Err(c.invalid(
                    &dlq,
                    format!(
                        "{t:?} belongs to MM2 heartbeats, Kafka Connect or Schema Registry; failed records must not land there"
                    ),
                ));
            }
            Ok(er_plugin_host::ErrorPolicy::DeadLetter { topic: t })
        }
        (OnError::DeadLetter, None) => {
            Err(c.invalid(&dlq, "is required with on_error = \"dead-letter\""))
        }
        (OnError::Stop | OnError::Skip, Some(_)) => {
            Err(c.invalid(&dlq, "is only used with on_error = \"dead-letter\""))
        }
    }
}

/// Flattens a plugin's settings table into `init`'s key/value list, in file order. Strings,
/// numbers and booleans pass as text; a list passes its key once per element. On error, returns
/// the key and the problem.
fn plugin_settings(table: &toml::Table) -> Result<Vec<(String, String)>, (String, String)> {
    fn scalar(key: &str, v: &toml::Value) -> Result<String, (String, String)> {
        match v {
            toml::Value::String(s) => Ok(s.clone()),
            toml::Value::Integer(i) => Ok(i.to_string()),
            toml::Value::Float(f) => Ok(f.to_string()),
            toml::Value::Boolean(b) => Ok(b.to_string()),
            other => Err((
                key.to_owned(),
                format!(
                    "a {} is not a plugin setting (use a string, number, boolean or a list of them)",
                    other.type_str()
                ),
            )),
        }
    }
    let mut out = Vec::with_capacity(table.len());
    for (k, v) in table {
        match v {
            toml::Value::Array(items) => {
                for item in items {
                    out.push((k.clone(), scalar(k, item)?));
                }
            }
            v => out.push((k.clone(), scalar(k, v)?)),
        }
    }
    Ok(out)
}
