//! Sends records to different topics by key, header or a JSON field.
//!
//! Settings:
//! - `by` = `key` | `header:<name>` | `json:<path>` (a dotted path into the JSON value).
//! - `route.<value>` = `<topic>`: records whose selector equals `<value>` go to `<topic>`.
//! - `template` = `readings.{value}`: topic for values without a `route.` entry (`{value}` is
//!   replaced by the selector).
//! - `default` = `<topic>`: topic for records with no route, no template or no selector value.
//!   Without it such records keep their topic.

use std::collections::HashMap;

use er_plugin_sdk::json::{self, Value};
use er_plugin_sdk::{Config, Outcome, Plugin, Record};

#[derive(Debug)]
enum By {
    Key,
    Header(String),
    Json(String),
}

/// The route plugin.
#[derive(Debug)]
pub struct Route {
    by: By,
    routes: HashMap<String, String>,
    template: Option<String>,
    default: Option<String>,
}

impl Route {
    fn selector(&self, rec: &Record<'_>) -> Option<String> {
        match &self.by {
            By::Key => rec.key_str().map(str::to_owned),
            By::Header(h) => rec.header_str(h).map(str::to_owned),
            By::Json(path) => {
                let v = rec.json().ok()?;
                match json::get_path(&v, path)? {
                    Value::String(s) => Some(s.clone()),
                    Value::Null => None,
                    other => Some(other.to_string()),
                }
            }
        }
    }

    /// The destination topic of `rec`, if it changes.
    pub fn destination(&self, rec: &Record<'_>) -> Option<String> {
        let sel = self.selector(rec);
        let routed = sel.as_ref().and_then(|s| {
            self.routes
                .get(s)
                .cloned()
                .or_else(|| self.template.as_ref().map(|t| t.replace("{value}", s)))
        });
        routed.or_else(|| self.default.clone())
    }
}

impl Plugin for Route {
    fn init(config: Config) -> Result<Self, String> {
        config.check_known(&["by", "route.", "template", "default"])?;
        let by = config.require("by")?;
        let by = if by == "key" {
            By::Key
        } else if let Some(h) = by.strip_prefix("header:") {
            By::Header(h.to_owned())
        } else if let Some(p) = by.strip_prefix("json:") {
            By::Json(p.to_owned())
        } else {
            return Err(format!(
                "by = \"{by}\": expected key, header:<name> or json:<path>"
            ));
        };
        let routes: HashMap<_, _> = config
            .with_prefix("route.")
            .map(|(v, t)| (v.to_owned(), t.to_owned()))
            .collect();
        let template = config.get("template").map(str::to_owned);
        if routes.is_empty() && template.is_none() {
            return Err("no routes: set route.<value> = <topic> or template".into());
        }
        Ok(Route {
            by,
            routes,
            template,
            default: config.get("default").map(str::to_owned),
        })
    }

    fn process<'a>(&mut self, rec: &Record<'a>) -> Outcome<'a> {
        match self.destination(rec) {
            Some(topic) if topic != rec.topic() => {
                Outcome::replace_one(rec.to_new().with_topic(topic))
            }
            _ => Outcome::Keep,
        }
    }
}

er_plugin_sdk::export_plugin!(Route);

#[cfg(test)]
mod tests {
    use super::*;
    use er_plugin_sdk::testing::{TestOutcome, TestRecord, run};

    fn topics(cfg: &[(&str, &str)], recs: &[TestRecord]) -> Vec<String> {
        let mut r = Route::init(Config::new(
            cfg.iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect(),
        ))
        .unwrap();
        run(&mut r, recs)
            .unwrap()
            .into_iter()
            .map(|o| match o {
                TestOutcome::Keep => "=".to_owned(),
                TestOutcome::Replace(v) => v[0].topic.clone().unwrap(),
                other => panic!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn routes_by_key_json_and_template() {
        let recs = [
            TestRecord::new("t", "").key("a"),
            TestRecord::new("t", "").key("b"),
            TestRecord::new("t", ""),
        ];
        assert_eq!(
            topics(
                &[("by", "key"), ("route.a", "ta"), ("default", "rest")],
                &recs
            ),
            ["ta", "rest", "rest"]
        );
        let recs = [
            TestRecord::new("t", r#"{"kind":"temp"}"#),
            TestRecord::new("t", "{}"),
        ];
        assert_eq!(
            topics(&[("by", "json:kind"), ("template", "r.{value}")], &recs),
            ["r.temp", "="]
        );
    }
}
