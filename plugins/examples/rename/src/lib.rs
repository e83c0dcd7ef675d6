//! Renames topics by regex rules with captures.
//!
//! Settings: `rule` (repeatable) or `rule.<n>` = `<regex> => <replacement>`, e.g.
//! `rule.1 = ^sensors\.(\w+)$ => plant1.$1`. Rules are tried in config order; the first whose
//! regex matches the whole topic renames it (`$1`, `${name}` refer to captures). Records whose
//! topic matches no rule pass unchanged. Results are memoized per topic.

use std::collections::HashMap;

use er_plugin_sdk::{Config, Outcome, Plugin, Record};
use regex::Regex;

/// The rename plugin.
#[derive(Debug)]
pub struct Rename {
    rules: Vec<(Regex, String)>,
    memo: HashMap<String, Option<String>>,
}

impl Rename {
    /// The new name of `topic`, if a rule matches.
    pub fn rename(&self, topic: &str) -> Option<String> {
        self.rules.iter().find_map(|(re, repl)| {
            let caps = re.captures(topic)?;
            let mut out = String::new();
            caps.expand(repl, &mut out);
            Some(out)
        })
    }
}

impl Plugin for Rename {
    fn init(config: Config) -> Result<Self, String> {
        config.check_known(&["rule", "rule."])?;
        let mut rules = Vec::new();
        for (key, spec) in config.iter() {
            let (pattern, repl) = spec.split_once("=>").ok_or_else(|| {
                format!("{key} = \"{spec}\": expected \"<regex> => <replacement>\"")
            })?;
            let pattern = pattern.trim();
            // Anchor so a rule for `a` does not rename `xay`.
            let re = Regex::new(&format!("^(?:{pattern})$"))
                .map_err(|e| format!("{key}: bad regex \"{pattern}\": {e}"))?;
            rules.push((re, repl.trim().to_owned()));
        }
        if rules.is_empty() {
            return Err("no rename rules: set rule.1 = \"<regex> => <replacement>\"".into());
        }
        Ok(Rename {
            rules,
            memo: HashMap::new(),
        })
    }

    fn process<'a>(&mut self, rec: &Record<'a>) -> Outcome<'a> {
        let new = match self.memo.get(rec.topic()) {
            Some(new) => new.clone(),
            None => {
                let new = self.rename(rec.topic());
                self.memo.insert(rec.topic().to_owned(), new.clone());
                new
            }
        };
        match new {
            Some(topic) if topic != rec.topic() => {
                Outcome::replace_one(rec.to_new().with_topic(topic))
            }
            _ => Outcome::Keep,
        }
    }
}

er_plugin_sdk::export_plugin!(Rename);

#[cfg(test)]
mod tests {
    use super::*;
    use er_plugin_sdk::testing::{TestOutcome, TestRecord, run};

    fn cfg(rules: &[&str]) -> Config {
        Config::new(
            rules
                .iter()
                .enumerate()
                .map(|(i, r)| (format!("rule.{i}"), (*r).to_owned()))
                .collect(),
        )
    }

    #[test]
    fn first_matching_rule_renames_with_captures() {
        let mut p = Rename::init(cfg(&[r"sensors\.(\w+) => plant1.$1", r".* => other"])).unwrap();
        assert_eq!(p.rename("sensors.temp").as_deref(), Some("plant1.temp"));
        assert_eq!(p.rename("x").as_deref(), Some("other"));
        let out = run(&mut p, &[TestRecord::new("sensors.a", "v")]).unwrap();
        match &out[0] {
            TestOutcome::Replace(recs) => assert_eq!(recs[0].topic.as_deref(), Some("plant1.a")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_rules_are_rejected() {
        assert!(
            Rename::init(cfg(&["no arrow"]))
                .unwrap_err()
                .contains("expected")
        );
        assert!(
            Rename::init(cfg(&["( => x"]))
                .unwrap_err()
                .contains("bad regex")
        );
        assert!(Rename::init(Config::default()).is_err());
    }
}
