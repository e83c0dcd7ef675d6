//! Routes: which plugin chain a source topic takes and in which order its batches take the link.
//!
//! [`Routes`] is the matching (first route whose pattern matches, heartbeats never routed) and
//! [`Priority`] the sending order it implies; [`chain`] runs a partition's records through its
//! route's plugins and encodes the outputs into batches.

pub mod chain;

use regex::Regex;

/// The order in which ready batches take the link when it is the bottleneck: higher first.
/// The heartbeats topic rides above every route, so a saturated link never delays the
/// heartbeats that replication lag and failover are measured by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Priority {
    /// A route's `priority` (0 for topics matching no route).
    Route(i32),
    /// The heartbeats topic.
    Heartbeats,
}

impl Priority {
    /// The QUIC stream priority of a partition's stream (quinn sends higher first).
    pub fn stream_priority(self) -> i32 {
        match self {
            Priority::Route(p) => p.min(i32::MAX - 1),
            Priority::Heartbeats => i32::MAX,
        }
    }
}

impl std::fmt::Display for Priority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Priority::Route(p) => write!(f, "{p}"),
            Priority::Heartbeats => f.write_str("heartbeats"),
        }
    }
}

/// A configured route.
#[derive(Debug, Clone)]
pub struct Route {
    /// Name in logs and metrics.
    pub name: String,
    /// Whole-name topic matchers.
    pub topics: Vec<Regex>,
    /// Sending order of its topics' batches when the link is the bottleneck (higher first).
    pub priority: i32,
    /// The chain's plugins with their settings, paths made absolute.
    pub plugins: Vec<er_plugin_host::PluginSpec>,
    /// What a plugin failure does.
    pub policy: er_plugin_host::ErrorPolicy,
    /// What one plugin of the chain may produce.
    pub output_limits: er_plugin_host::OutputLimits,
    /// Names of the chain's plugins that the hub distributes (`hub = "<name>"`).
    pub hub_plugins: Vec<String>,
}

/// The routes in configuration order; a topic takes the first one whose pattern matches it.
/// Derefs to the slice of routes (index = the route's number in logs and in the pipeline).
#[derive(Debug, Clone, Default)]
pub struct Routes(Vec<Route>);

impl From<Vec<Route>> for Routes {
    fn from(routes: Vec<Route>) -> Self {
        Self(routes)
    }
}

impl std::ops::Deref for Routes {
    type Target = [Route];

    fn deref(&self) -> &[Route] {
        &self.0
    }
}

impl Routes {
    /// Index of the route whose plugin chain a source topic takes, if any: the first route
    /// matching it, unless that route has no plugins. The heartbeats topic never takes one:
    /// internal records never reach a plugin.
    pub fn route_for(&self, topic: &str) -> Option<usize> {
        self.matching(topic)
            .filter(|&i| !self.0[i].plugins.is_empty())
    }

    fn matching(&self, topic: &str) -> Option<usize> {
        if topic == er_protocol::HEARTBEATS_TOPIC {
            return None;
        }
        self.0
            .iter()
            .position(|r| r.topics.iter().any(|re| re.is_match(topic)))
    }

    /// The sending priority of a source topic's batches: the heartbeats topic's is above every
    /// route's, a topic matching no route has 0.
    pub fn priority_for(&self, topic: &str) -> Priority {
        if topic == er_protocol::HEARTBEATS_TOPIC {
            return Priority::Heartbeats;
        }
        Priority::Route(self.matching(topic).map_or(0, |i| self.0[i].priority))
    }

    /// Every priority a replicated topic can have, highest first.
    pub fn priorities(&self) -> Vec<Priority> {
        let mut all: Vec<Priority> = self
            .0
            .iter()
            .map(|r| Priority::Route(r.priority))
            .chain([Priority::Route(0), Priority::Heartbeats])
            .collect();
        all.sort_unstable_by(|a, b| b.cmp(a));
        all.dedup();
        all
    }

    /// Plugins over all routes (each holds an instance slot of the plugin host).
    pub fn plugin_count(&self) -> usize {
        self.0.iter().map(|r| r.plugins.len()).sum()
    }

    /// Names of the hub-distributed plugins the routes use.
    pub fn hub_plugins(&self) -> std::collections::BTreeSet<String> {
        self.0
            .iter()
            .flat_map(|r| r.hub_plugins.iter().cloned())
            .collect()
    }
}
