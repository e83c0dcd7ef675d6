//! The record API as a plugin author uses it: string and byte header values, typed JSON,
//! tombstones.

use er_plugin_sdk::testing::{TestOutcome, TestRecord, run};
use er_plugin_sdk::{Config, Outcome, Plugin, Record};

/// Runs `f` as a plugin over `records`.
fn with<F>(f: F, records: &[TestRecord]) -> Vec<TestOutcome>
where
    F: for<'a> Fn(&Record<'a>) -> Outcome<'a> + 'static,
{
    struct P(Box<dyn for<'a> Fn(&Record<'a>) -> Outcome<'a>>);
    impl Plugin for P {
        fn init(_: Config) -> Result<Self, String> {
            unreachable!("built directly")
        }
        fn process<'a>(&mut self, rec: &Record<'a>) -> Outcome<'a> {
            (self.0)(rec)
        }
    }
    run(&mut P(Box::new(f)), records).expect("run")
}

fn replaced(out: &TestOutcome) -> &er_plugin_sdk::testing::TestOut {
    match out {
        TestOutcome::Replace(r) if r.len() == 1 => &r[0],
        other => panic!("expected one replacement, got {other:?}"),
    }
}

#[test]
fn header_values_take_text_and_bytes() {
    let out = with(
        |rec| {
            let site = String::from("plant-9");
            Outcome::replace_one(
                rec.to_new()
                    .with_header("site", "b") // the guide's example: a &str value
                    .with_header("owner", site) // String
                    .with_header("raw", b"\x00\xff") // byte string
                    .with_header("copied", rec.key().unwrap_or_default()) // input bytes
                    .with_null_header("trace")
                    .with_value("plain text"),
            )
        },
        &[TestRecord::new("t", "v").key("k").header("site", "a")],
    );
    let r = replaced(&out[0]);
    let headers: Vec<_> = r
        .headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_deref()))
        .collect();
    assert_eq!(
        headers,
        [
            ("site", Some(&b"b"[..])),
            ("owner", Some(&b"plant-9"[..])),
            ("raw", Some(&b"\x00\xff"[..])),
            ("copied", Some(&b"k"[..])),
            ("trace", None),
        ]
    );
    assert_eq!(r.value_str(), "plain text");
}

#[derive(serde::Deserialize)]
struct Reading<'a> {
    temperature: f64,
    #[serde(borrow)]
    unit: Option<&'a str>,
}

#[test]
fn json_as_decodes_typed_values_and_names_what_is_wrong() {
    let out = with(
        |rec| match rec.json_as::<Reading<'_>>() {
            Ok(r) => Outcome::replace_one(rec.to_new().with_value(format!(
                "{}{}",
                r.temperature,
                r.unit.unwrap_or("?")
            ))),
            Err(e) => Outcome::fail(e),
        },
        &[
            TestRecord::new("t", r#"{"temperature":31.5,"unit":"C","extra":[1,2]}"#),
            TestRecord::new("t", r#"{"temp":31}"#),
            TestRecord::new("t", "nope"),
            TestRecord {
                value: None,
                ..TestRecord::new("t", "")
            },
        ],
    );
    assert_eq!(replaced(&out[0]).value_str(), "31.5C");
    let fail = |o: &TestOutcome| match o {
        TestOutcome::Fail(m) => m.clone(),
        other => panic!("expected a failure, got {other:?}"),
    };
    assert!(
        fail(&out[1]).contains("missing field `temperature`"),
        "{out:?}"
    );
    assert!(fail(&out[2]).contains("not the expected JSON"), "{out:?}");
    assert_eq!(fail(&out[3]), "value is null (a tombstone), not JSON");
}

#[test]
fn tombstones_are_visible_and_json_says_why_it_fails() {
    let out = with(
        |rec| {
            if rec.is_tombstone() {
                return Outcome::fail(rec.json().unwrap_err());
            }
            match rec.json() {
                Ok(v) => Outcome::replace_one(rec.to_new().with_json(&v)),
                Err(e) => Outcome::fail(e),
            }
        },
        &[
            TestRecord {
                value: None,
                ..TestRecord::new("t", "")
            },
            TestRecord::new("t", r#"{ "a" : 1 }"#),
        ],
    );
    assert_eq!(
        out[0],
        TestOutcome::Fail("value is null (a tombstone), not JSON".into())
    );
    assert_eq!(replaced(&out[1]).value_str(), r#"{"a":1}"#);
}
