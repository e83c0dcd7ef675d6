//! A starter edge-replicator plugin: keeps readings above a temperature limit and marks them.
//!
//! Settings: `limit` (a number, default 30). Tombstones (null values) pass unchanged; a value
//! that is not a JSON reading fails the record, and the route's error policy decides.

use er_plugin_sdk::{Config, Outcome, Plugin, Record};
use serde::Deserialize;

/// The fields of a record's JSON value this plugin reads; other fields are skipped.
#[derive(Deserialize)]
struct Reading {
    temperature: f64,
}

/// The plugin: its settings, parsed once by `init`.
pub struct KeepHot {
    limit: f64,
}

impl Plugin for KeepHot {
    fn init(config: Config) -> Result<Self, String> {
        config.check_known(&["limit"])?; // a typo in the route config fails at startup
        Ok(KeepHot {
            limit: config.parse("limit")?.unwrap_or(30.0),
        })
    }

    fn process<'a>(&mut self, rec: &Record<'a>) -> Outcome<'a> {
        // A tombstone deletes its key on a compacted topic: pass it on, or the delete never
        // reaches the central cluster. (`rec.json_as` would fail it: it has no JSON.)
        if rec.is_tombstone() {
            return Outcome::Keep;
        }
        match rec.json_as::<Reading>() {
            Ok(r) if r.temperature > self.limit => {
                Outcome::replace_one(rec.to_new().with_header("alert", "hot"))
            }
            Ok(_) => Outcome::Drop,
            Err(e) => Outcome::fail(e),
        }
    }
}

er_plugin_sdk::export_plugin!(KeepHot);

#[cfg(test)]
mod tests {
    use super::*;
    use er_plugin_sdk::testing::{TestOutcome, TestRecord, run};

    #[test]
    fn keeps_hot_drops_cold_passes_tombstones_and_fails_garbage() {
        let mut p = KeepHot::init(Config::new(vec![("limit".into(), "20".into())])).unwrap();
        let tombstone = TestRecord {
            value: None,
            ..TestRecord::new("sensors", "")
        };
        let out = run(
            &mut p,
            &[
                TestRecord::new("sensors", r#"{"temperature":25}"#),
                TestRecord::new("sensors", r#"{"temperature":15}"#),
                tombstone,
                TestRecord::new("sensors", "not json"),
            ],
        )
        .unwrap();
        let TestOutcome::Replace(hot) = &out[0] else {
            panic!("{out:?}")
        };
        assert_eq!(hot[0].header("alert"), Some("hot"));
        assert_eq!(hot[0].value_str(), r#"{"temperature":25}"#);
        assert_eq!(out[1], TestOutcome::Drop);
        assert_eq!(out[2], TestOutcome::Keep);
        assert!(matches!(&out[3], TestOutcome::Fail(e) if e.contains("not the expected JSON")));
    }

    #[test]
    fn rejects_unknown_settings() {
        let err = KeepHot::init(Config::new(vec![("limt".into(), "1".into())])).err();
        assert!(err.unwrap().contains("unknown setting \"limt\""));
    }
}
