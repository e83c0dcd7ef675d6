//! Reshapes JSON values: drops, redacts and renames fields, and stamps a site header.
//!
//! Settings (paths are dotted JSON paths, lists are comma-separated):
//! - `drop` = `a, b.c`: fields removed.
//! - `redact` = `password, user.email`: fields replaced by `redact_with` (default `"***"`)
//!   when present.
//! - `rename.<from>` = `<to>`: field moved (e.g. `rename.temp = temperature`).
//! - `site` = `berlin-01`: adds header `site_header` (default `site`) with this value.
//! - `on_invalid` = `fail` (default) | `keep` | `drop`: records whose value is not JSON.

use er_plugin_sdk::json::{self, Value};
use er_plugin_sdk::{Config, Outcome, Plugin, Record};

/// The transform plugin.
#[derive(Debug)]
pub struct Transform {
    drop: Vec<String>,
    redact: Vec<String>,
    redact_with: Value,
    rename: Vec<(String, String)>,
    site: Option<(String, String)>,
    on_invalid: OnInvalid,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OnInvalid {
    Fail,
    Keep,
    Drop,
}

fn list(s: Option<&str>) -> Vec<String> {
    s.map(|s| {
        s.split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(str::to_owned)
            .collect()
    })
    .unwrap_or_default()
}

impl Transform {
    /// Applies the field edits to a parsed value.
    pub fn edit(&self, v: &mut Value) {
        for p in &self.drop {
            json::remove_path(v, p);
        }
        for p in &self.redact {
            if let Some(slot) = json::get_path_mut(v, p) {
                *slot = self.redact_with.clone();
            }
        }
        for (from, to) in &self.rename {
            json::rename_path(v, from, to);
        }
    }
}

impl Plugin for Transform {
    fn init(config: Config) -> Result<Self, String> {
        config.check_known(&[
            "drop",
            "redact",
            "redact_with",
            "rename.",
            "site",
            "site_header",
            "on_invalid",
        ])?;
        let on_invalid = match config.get("on_invalid").unwrap_or("fail") {
            "fail" => OnInvalid::Fail,
            "keep" => OnInvalid::Keep,
            "drop" => OnInvalid::Drop,
            other => {
                return Err(format!(
                    "on_invalid = \"{other}\": expected fail, keep or drop"
                ));
            }
        };
        let site = config.get("site").map(|s| {
            (
                config.get("site_header").unwrap_or("site").to_owned(),
                s.to_owned(),
            )
        });
        Ok(Transform {
            drop: list(config.get("drop")),
            redact: list(config.get("redact")),
            redact_with: Value::from(config.get("redact_with").unwrap_or("***")),
            rename: config
                .with_prefix("rename.")
                .map(|(f, t)| (f.to_owned(), t.to_owned()))
                .collect(),
            site,
            on_invalid,
        })
    }

    fn process<'a>(&mut self, rec: &Record<'a>) -> Outcome<'a> {
        let mut out = rec.to_new();
        if let Some((name, value)) = &self.site {
            out = out.with_header(name.clone(), value.clone().into_bytes());
        }
        let edits = !(self.drop.is_empty() && self.redact.is_empty() && self.rename.is_empty());
        if edits && rec.value().is_some() {
            match rec.json() {
                Ok(mut v) => {
                    self.edit(&mut v);
                    out = out.with_json(&v);
                }
                Err(e) => {
                    er_plugin_sdk::counter_add("invalid_json", 1);
                    match self.on_invalid {
                        OnInvalid::Fail => return Outcome::Fail(e),
                        OnInvalid::Drop => return Outcome::Drop,
                        OnInvalid::Keep => {}
                    }
                }
            }
        }
        Outcome::replace_one(out)
    }
}

er_plugin_sdk::export_plugin!(Transform);

#[cfg(test)]
mod tests {
    use super::*;
    use er_plugin_sdk::testing::{TestOutcome, TestRecord, run};

    fn cfg(kv: &[(&str, &str)]) -> Config {
        Config::new(kv.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect())
    }

    #[test]
    fn drops_redacts_renames_and_stamps_site() {
        let mut t = Transform::init(cfg(&[
            ("drop", "debug, a.tmp"),
            ("redact", "user.email"),
            ("rename.temp", "temperature"),
            ("site", "berlin-01"),
        ]))
        .unwrap();
        let rec = TestRecord::new(
            "t",
            r#"{"debug":1,"a":{"tmp":2,"k":3},"user":{"email":"x@y"},"temp":21}"#,
        );
        let out = run(&mut t, &[rec]).unwrap();
        let TestOutcome::Replace(recs) = &out[0] else {
            panic!("{out:?}")
        };
        assert_eq!(
            recs[0].value_str(),
            r#"{"a":{"k":3},"temperature":21,"user":{"email":"***"}}"#
        );
        assert_eq!(recs[0].header("site"), Some("berlin-01"));
    }

    #[test]
    fn invalid_json_follows_on_invalid() {
        let rec = [TestRecord::new("t", "nope")];
        let mut fail = Transform::init(cfg(&[("drop", "a")])).unwrap();
        assert!(
            matches!(&run(&mut fail, &rec).unwrap()[0], TestOutcome::Fail(m) if m.contains("not JSON"))
        );
        let mut drop = Transform::init(cfg(&[("drop", "a"), ("on_invalid", "drop")])).unwrap();
        assert_eq!(run(&mut drop, &rec).unwrap()[0], TestOutcome::Drop);
        assert!(
            Transform::init(cfg(&[("bogus", "1")]))
                .unwrap_err()
                .contains("bogus")
        );
    }
}
