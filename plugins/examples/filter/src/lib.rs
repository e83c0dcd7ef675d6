//! Keeps records where a header or JSON field matches every configured condition.
//!
//! Settings:
//! - `condition` (repeatable; all must hold): `<field> <op> <literal>`, e.g. `temperature > 30`,
//!   `header:site == "berlin"`, `status != idle`, `sensor.kind == "thermo"`.
//!   - field: `header:<name>` (last header of that name), `key`, or a dotted JSON path into the
//!     value (`json:` prefix optional).
//!   - op: `>`, `>=`, `<`, `<=`, `==`, `!=`.
//!   - literal: a number (numeric comparison; a string field must parse as a number), `true`,
//!     `false`, or a string (quoted or bare; `==` and `!=` only).
//! - `on_missing` = `drop` (default) | `keep`: what happens when the field is absent, null, or
//!   the value is not JSON.

use std::cmp::Ordering;

use er_plugin_sdk::json::{PathSet, Value};
use er_plugin_sdk::{Config, Outcome, Plugin, Record};

/// Where a condition reads its operand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Field {
    /// The last header of this name.
    Header(String),
    /// The record key.
    Key,
    /// A dotted JSON path into the value.
    Json(String),
}

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `==`
    Eq,
    /// `!=`
    Ne,
}

/// The literal a field is compared with.
#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    /// A number.
    Num(f64),
    /// A boolean.
    Bool(bool),
    /// A string.
    Str(String),
}

/// One parsed condition.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    /// Operand.
    pub field: Field,
    /// Operator.
    pub op: Op,
    /// Literal.
    pub literal: Literal,
}

impl Condition {
    /// Parses `<field> <op> <literal>`.
    pub fn parse(s: &str) -> Result<Self, String> {
        const OPS: [(&str, Op); 6] = [
            (">=", Op::Ge),
            ("<=", Op::Le),
            ("==", Op::Eq),
            ("!=", Op::Ne),
            (">", Op::Gt),
            ("<", Op::Lt),
        ];
        let (pos, tok, op) = OPS
            .iter()
            .filter_map(|(tok, op)| s.find(tok).map(|p| (p, *tok, *op)))
            .min_by_key(|(p, tok, _)| (*p, std::cmp::Reverse(tok.len())))
            .ok_or_else(|| format!("condition \"{s}\": no operator (use > >= < <= == !=)"))?;
        let field = s[..pos].trim();
        let lit = s[pos + tok.len()..].trim();
        if field.is_empty() || lit.is_empty() {
            return Err(format!(
                "condition \"{s}\": expected <field> <op> <literal>"
            ));
        }
        let field = if let Some(h) = field.strip_prefix("header:") {
            Field::Header(h.to_owned())
        } else if field == "key" {
            Field::Key
        } else {
            Field::Json(field.strip_prefix("json:").unwrap_or(field).to_owned())
        };
        let literal = if let Some(q) = lit.strip_prefix('"').and_then(|l| l.strip_suffix('"')) {
            Literal::Str(q.to_owned())
        } else if let Ok(n) = lit.parse::<f64>() {
            Literal::Num(n)
        } else if lit == "true" || lit == "false" {
            Literal::Bool(lit == "true")
        } else {
            Literal::Str(lit.to_owned())
        };
        if !matches!(literal, Literal::Num(_)) && !matches!(op, Op::Eq | Op::Ne) {
            return Err(format!(
                "condition \"{s}\": only == and != compare strings and booleans"
            ));
        }
        Ok(Condition { field, op, literal })
    }

    fn holds(&self, ord: Option<Ordering>) -> bool {
        let Some(ord) = ord else {
            return self.op == Op::Ne;
        };
        match self.op {
            Op::Gt => ord == Ordering::Greater,
            Op::Ge => ord != Ordering::Less,
            Op::Lt => ord == Ordering::Less,
            Op::Le => ord != Ordering::Greater,
            Op::Eq => ord == Ordering::Equal,
            Op::Ne => ord != Ordering::Equal,
        }
    }

    /// Evaluates on raw text (headers and keys). `None` when the text is absent.
    pub fn eval_text(&self, text: Option<&str>) -> Option<bool> {
        let text = text?;
        Some(match &self.literal {
            Literal::Num(n) => self.holds(parse_f64(text.trim()).and_then(|x| x.partial_cmp(n))),
            Literal::Bool(b) => self.holds(text.parse::<bool>().ok().map(|x| x.cmp(b))),
            Literal::Str(s) => self.holds(Some(text.cmp(s.as_str()))),
        })
    }

    /// Evaluates on a JSON value. `None` when it is absent or null.
    pub fn eval_json(&self, v: Option<&Value>) -> Option<bool> {
        let v = v.filter(|v| !v.is_null())?;
        if let Value::String(s) = v {
            return self.eval_text(Some(s));
        }
        Some(match &self.literal {
            Literal::Num(n) => self.holds(v.as_f64().and_then(|x| x.partial_cmp(n))),
            Literal::Bool(b) => self.holds(v.as_bool().map(|x| x.cmp(b))),
            Literal::Str(s) => self.holds(Some(v.to_string().as_str().cmp(s.as_str()))),
        })
    }
}

/// `s.parse::<f64>()`, with a shortcut for the common case of a short integer (exact in an
/// `f64`), which is several times cheaper than the general float parser.
fn parse_f64(s: &str) -> Option<f64> {
    let digits = s.strip_prefix('-').unwrap_or(s);
    if (1..=15).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit()) {
        let n = digits
            .bytes()
            .fold(0i64, |n, b| n * 10 + i64::from(b - b'0')) as f64;
        return Some(if digits.len() < s.len() { -n } else { n });
    }
    s.parse().ok()
}

/// The filter plugin.
#[derive(Debug)]
pub struct Filter {
    conditions: Vec<Condition>,
    keep_missing: bool,
    /// The JSON paths of the conditions, looked up in one pass per record.
    paths: PathSet,
    /// Per condition: its index in `paths` (JSON conditions only).
    slots: Vec<usize>,
}

impl Filter {
    /// Whether `rec` passes every condition.
    pub fn matches(&self, rec: &Record<'_>) -> bool {
        // Not JSON (or null) means every JSON field is missing.
        let found = if self.paths.is_empty() {
            None
        } else {
            rec.json_paths(&self.paths).ok()
        };
        self.conditions.iter().zip(&self.slots).all(|(c, &slot)| {
            let r = match &c.field {
                Field::Header(h) => c.eval_text(rec.header_str(h)),
                Field::Key => c.eval_text(rec.key_str()),
                Field::Json(_) => c.eval_json(found.as_ref().and_then(|f| f[slot].as_ref())),
            };
            r.unwrap_or(self.keep_missing)
        })
    }
}

impl Plugin for Filter {
    fn init(config: Config) -> Result<Self, String> {
        config.check_known(&["condition", "on_missing"])?;
        let conditions = config
            .iter()
            .filter(|(k, _)| *k == "condition")
            .map(|(_, v)| Condition::parse(v))
            .collect::<Result<Vec<_>, _>>()?;
        if conditions.is_empty() {
            return Err(
                "missing required setting \"condition\" (e.g. \"temperature > 30\")".into(),
            );
        }
        let keep_missing = match config.get("on_missing").unwrap_or("drop") {
            "drop" => false,
            "keep" => true,
            other => return Err(format!("on_missing = \"{other}\": expected drop or keep")),
        };
        let mut json_paths = Vec::new();
        let slots = conditions
            .iter()
            .map(|c| match &c.field {
                Field::Json(path) => {
                    json_paths.push(path.as_str());
                    json_paths.len() - 1
                }
                _ => 0,
            })
            .collect();
        Ok(Filter {
            paths: PathSet::new(json_paths),
            conditions,
            keep_missing,
            slots,
        })
    }

    fn process<'a>(&mut self, rec: &Record<'a>) -> Outcome<'a> {
        if self.matches(rec) {
            Outcome::Keep
        } else {
            Outcome::Drop
        }
    }
}

er_plugin_sdk::export_plugin!(Filter);

#[cfg(test)]
mod tests {
    use super::*;
    use er_plugin_sdk::testing::{TestOutcome::*, TestRecord, run};

    fn filter(conds: &[&str]) -> Filter {
        Filter::init(Config::new(
            conds
                .iter()
                .map(|c| ("condition".into(), (*c).into()))
                .collect(),
        ))
        .unwrap()
    }

    #[test]
    fn json_and_header_conditions() {
        let cases: &[(&str, TestRecord, bool)] = &[
            (
                "temperature > 30",
                TestRecord::new("t", r#"{"temperature":31}"#),
                true,
            ),
            (
                "temperature > 30",
                TestRecord::new("t", r#"{"temperature":30}"#),
                false,
            ),
            (
                "temperature >= 30",
                TestRecord::new("t", r#"{"temperature":30}"#),
                true,
            ),
            (
                "temperature < 0",
                TestRecord::new("t", r#"{"temperature":-1.5}"#),
                true,
            ),
            (
                "temperature <= 0",
                TestRecord::new("t", r#"{"other":1}"#),
                false,
            ),
            (
                "a.b == \"x\"",
                TestRecord::new("t", r#"{"a":{"b":"x"}}"#),
                true,
            ),
            (
                "a.b != x",
                TestRecord::new("t", r#"{"a":{"b":"x"}}"#),
                false,
            ),
            ("ok == true", TestRecord::new("t", r#"{"ok":true}"#), true),
            (
                "header:temp > 30",
                TestRecord::new("t", "not json").header("temp", "42"),
                true,
            ),
            (
                "header:site == berlin",
                TestRecord::new("t", "").header("site", "paris"),
                false,
            ),
            ("key == k1", TestRecord::new("t", "").key("k1"), true),
            ("temperature > 30", TestRecord::new("t", "not json"), false),
        ];
        for (cond, rec, keep) in cases {
            let out = run(&mut filter(&[cond]), std::slice::from_ref(rec)).unwrap();
            assert_eq!(
                out,
                vec![if *keep { Keep } else { Drop }],
                "{cond} on {rec:?}"
            );
        }
    }

    #[test]
    fn number_shortcut_parses_like_f64() {
        for s in [
            "0",
            "-0",
            "35",
            "-35",
            "007",
            "+5",
            "1.5",
            "1e3",
            "999999999999999",
            "9999999999999999",
            "-",
            "",
            "12a",
            " 1",
            "inf",
            "NaN",
            "٣",
        ] {
            let want = s.parse::<f64>().ok();
            let got = parse_f64(s);
            assert_eq!(got.map(f64::to_bits), want.map(f64::to_bits), "{s:?}");
        }
    }

    #[test]
    fn all_conditions_must_hold() {
        let mut f = filter(&["a > 1", "b < 5"]);
        let out = run(
            &mut f,
            &[
                TestRecord::new("t", r#"{"a":2,"b":4}"#),
                TestRecord::new("t", r#"{"a":2,"b":6}"#),
            ],
        )
        .unwrap();
        assert_eq!(out, vec![Keep, Drop]);
    }

    #[test]
    fn bad_conditions_are_rejected() {
        for bad in ["temperature", "> 3", "name > abc"] {
            let err =
                Filter::init(Config::new(vec![("condition".into(), bad.into())])).unwrap_err();
            assert!(err.contains(bad), "{err}");
        }
        assert!(
            Filter::init(Config::default())
                .unwrap_err()
                .contains("condition")
        );
    }
}
