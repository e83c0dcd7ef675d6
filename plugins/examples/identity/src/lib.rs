//! Keeps every record unchanged: the smallest possible plugin, and the baseline of the host bench.

use er_plugin_sdk::{Config, Outcome, Plugin, Record};

/// The identity plugin.
#[derive(Debug)]
pub struct Identity;

impl Plugin for Identity {
    /// Accepts and ignores any settings, so it can stand in for any plugin of a route.
    fn init(_config: Config) -> Result<Self, String> {
        Ok(Identity)
    }

    fn process<'a>(&mut self, _rec: &Record<'a>) -> Outcome<'a> {
        Outcome::Keep
    }
}

er_plugin_sdk::export_plugin!(Identity);
