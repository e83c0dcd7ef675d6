//! JSON helpers for record values: dotted paths (`a.b.0.c`) into `serde_json` values.
//!
//! ```
//! use er_plugin_sdk::json::{self, Value};
//!
//! let mut v: Value = serde_json::from_str(r#"{"sensor":{"temp":31,"id":"x"}}"#).unwrap();
//! assert_eq!(json::get_path(&v, "sensor.temp"), Some(&Value::from(31)));
//! json::rename_path(&mut v, "sensor.temp", "temperature");
//! json::set_path(&mut v, "sensor.id", Value::from("***"));
//! assert_eq!(v.to_string(), r#"{"sensor":{"id":"***"},"temperature":31}"#);
//! ```

pub use serde_json::{self, Value};

fn step<'v>(v: &'v Value, key: &str) -> Option<&'v Value> {
    match v {
        Value::Object(m) => m.get(key),
        Value::Array(a) => key.parse::<usize>().ok().and_then(|i| a.get(i)),
        _ => None,
    }
}

fn step_mut<'v>(v: &'v mut Value, key: &str) -> Option<&'v mut Value> {
    match v {
        Value::Object(m) => m.get_mut(key),
        Value::Array(a) => key.parse::<usize>().ok().and_then(|i| a.get_mut(i)),
        _ => None,
    }
}

/// The value at a dotted `path` (object keys, or array indices as numbers).
pub fn get_path<'v>(v: &'v Value, path: &str) -> Option<&'v Value> {
    path.split('.').try_fold(v, step)
}

/// Mutable access to the value at `path`.
pub fn get_path_mut<'v>(v: &'v mut Value, path: &str) -> Option<&'v mut Value> {
    path.split('.').try_fold(v, step_mut)
}

/// Removes and returns the value at `path`; `None` when it does not exist.
pub fn remove_path(v: &mut Value, path: &str) -> Option<Value> {
    let (parent, last) = match path.rsplit_once('.') {
        Some((parent, last)) => (get_path_mut(v, parent)?, last),
        None => (v, path),
    };
    match parent {
        Value::Object(m) => m.remove(last),
        Value::Array(a) => {
            let i = last.parse::<usize>().ok().filter(|i| *i < a.len())?;
            Some(a.remove(i))
        }
        _ => None,
    }
}

/// Sets the value at `path`, creating missing objects on the way. Returns `false` when the path
/// goes through a value that is neither an object nor an in-range array index.
pub fn set_path(v: &mut Value, path: &str, new: Value) -> bool {
    let mut cur = v;
    let mut parts = path.split('.').peekable();
    while let Some(part) = parts.next() {
        let last = parts.peek().is_none();
        cur = match cur {
            Value::Object(m) => {
                if last {
                    m.insert(part.to_owned(), new);
                    return true;
                }
                m.entry(part.to_owned())
                    .or_insert_with(|| Value::Object(Default::default()))
            }
            Value::Array(a) => {
                let Some(slot) = part.parse::<usize>().ok().and_then(|i| a.get_mut(i)) else {
                    return false;
                };
                if last {
                    *slot = new;
                    return true;
                }
                slot
            }
            _ => return false,
        };
    }
    false
}

/// Moves the value at `from` to `to` (a dotted path too). Returns whether `from` existed.
pub fn rename_path(v: &mut Value, from: &str, to: &str) -> bool {
    match remove_path(v, from) {
        Some(x) => set_path(v, to, x),
        None => false,
    }
}

/// Compact JSON text of `v`.
pub fn to_bytes(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

/// Dotted paths looked up in one pass over a JSON document, without building the document's
/// tree: only the values at the paths are built. For a filter reading one field of a 1 KiB
/// record this skips allocating and copying every other string, number and object.
///
/// ```
/// use er_plugin_sdk::json::{PathSet, Value};
///
/// let paths = PathSet::new(["sensor.temp", "site", "tags.1"]);
/// let doc = br#"{"sensor":{"temp":31,"id":"x"},"tags":["a","b"],"pad":"..."}"#;
/// assert_eq!(
///     paths.extract(doc).unwrap(),
///     vec![Some(Value::from(31)), None, Some(Value::from("b"))]
/// );
/// assert!(paths.extract(b"{not json").is_err());
/// ```
#[derive(Debug, Clone, Default)]
pub struct PathSet {
    paths: Vec<Vec<String>>,
}

impl PathSet {
    /// The dotted paths to look up, in the order [`PathSet::extract`] returns their values.
    pub fn new<S: AsRef<str>>(paths: impl IntoIterator<Item = S>) -> Self {
        PathSet {
            paths: paths
                .into_iter()
                .map(|p| p.as_ref().split('.').map(str::to_owned).collect())
                .collect(),
        }
    }

    /// Number of paths.
    pub fn len(&self) -> usize {
        self.paths.len()
    }

    /// Whether there are no paths.
    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }

    /// The value at each path of the JSON text `json`: the same as
    /// `get_path(&serde_json::from_slice(json)?, path).cloned()` for each path, and an error
    /// exactly when `serde_json::from_slice::<Value>` fails (the whole text is still validated).
    pub fn extract(&self, json: &[u8]) -> Result<Vec<Option<Value>>, serde_json::Error> {
        let mut out = vec![None; self.paths.len()];
        let active: Vec<usize> = (0..self.paths.len()).collect();
        let mut de = serde_json::Deserializer::from_slice(json);
        serde::de::DeserializeSeed::deserialize(
            Node {
                set: self,
                active: &active,
                depth: 0,
                out: &mut out,
            },
            &mut de,
        )?;
        de.end()?;
        Ok(out)
    }
}

mod extract {
    //! The serde visitors behind [`super::PathSet::extract`].
    //!
    //! Every value is read with `deserialize_any`, as `Value` itself is, so serde_json applies
    //! the same checks (UTF-8, escapes, number ranges, nesting depth); values off the paths are
    //! checked and dropped, never built.

    use std::fmt;

    use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

    use super::{PathSet, Value, step};

    /// A value on the way to the paths in `active` (indices into `set.paths`), `depth`
    /// segments deep. Writes the values found into `out`.
    pub(super) struct Node<'a> {
        pub(super) set: &'a PathSet,
        pub(super) active: &'a [usize],
        pub(super) depth: usize,
        pub(super) out: &'a mut [Option<Value>],
    }

    impl Node<'_> {
        fn segment(&self, p: usize) -> &str {
            &self.set.paths[p][self.depth]
        }

        /// The active paths whose next segment is `matches`.
        fn next(&self, matches: impl Fn(&str) -> bool) -> Vec<usize> {
            self.active
                .iter()
                .copied()
                .filter(|&p| matches(self.segment(p)))
                .collect()
        }

        /// Descends into a child value for the paths in `next`.
        fn child<'b>(&'b mut self, next: &'b [usize]) -> Node<'b> {
            for &p in next {
                // A repeated object key replaces the earlier value, as in `Value`.
                self.out[p] = None;
            }
            Node {
                set: self.set,
                active: next,
                depth: self.depth + 1,
                out: self.out,
            }
        }
    }

    impl<'de> DeserializeSeed<'de> for Node<'_> {
        type Value = ();

        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            if self
                .active
                .iter()
                .any(|&p| self.set.paths[p].len() == self.depth)
            {
                // A path ends here: build this value, and look up any longer paths inside it.
                let v: Value = de::Deserialize::deserialize(d)?;
                for &p in self.active {
                    let rest = &self.set.paths[p][self.depth..];
                    self.out[p] = rest.iter().try_fold(&v, |v, s| step(v, s)).cloned();
                }
                return Ok(());
            }
            d.deserialize_any(self)
        }
    }

    impl<'de> Visitor<'de> for Node<'_> {
        type Value = ();

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("any JSON value")
        }

        fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<(), A::Error> {
            while let Some(next) = map.next_key_seed(Key(&self))? {
                if next.is_empty() {
                    map.next_value::<Skip>()?;
                } else {
                    map.next_value_seed(self.child(&next))?;
                }
            }
            Ok(())
        }

        fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<(), A::Error> {
            let mut index = 0usize;
            loop {
                // Array steps parse the segment as an index, as `get_path` does.
                let next = self.next(|s| s.parse::<usize>() == Ok(index));
                let more = if next.is_empty() {
                    seq.next_element::<Skip>()?.is_some()
                } else {
                    seq.next_element_seed(self.child(&next))?.is_some()
                };
                if !more {
                    return Ok(());
                }
                index += 1;
            }
        }

        // Scalars have no children: the paths through them do not exist.
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
            Ok(())
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
            Ok(())
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
            Ok(())
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
            Ok(())
        }
        fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
            Ok(())
        }
        fn visit_unit<E: de::Error>(self) -> Result<(), E> {
            Ok(())
        }
    }

    /// An object key: which active paths continue under it.
    struct Key<'a, 'n>(&'a Node<'n>);

    impl<'de> DeserializeSeed<'de> for Key<'_, '_> {
        type Value = Vec<usize>;

        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Vec<usize>, D::Error> {
            d.deserialize_str(self)
        }
    }

    impl<'de> Visitor<'de> for Key<'_, '_> {
        type Value = Vec<usize>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an object key")
        }

        fn visit_str<E: de::Error>(self, key: &str) -> Result<Vec<usize>, E> {
            Ok(self.0.next(|s| s == key))
        }
    }

    /// A value off every path: checked like `Value` checks it, then dropped.
    pub(super) struct Skip;

    impl<'de> de::Deserialize<'de> for Skip {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Skip, D::Error> {
            d.deserialize_any(Skip)
        }
    }

    impl<'de> Visitor<'de> for Skip {
        type Value = Skip;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("any JSON value")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Skip, A::Error> {
            while map.next_key::<Skip>()?.is_some() {
                map.next_value::<Skip>()?;
            }
            Ok(Skip)
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Skip, A::Error> {
            while seq.next_element::<Skip>()?.is_some() {}
            Ok(Skip)
        }

        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Skip, E> {
            Ok(Skip)
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<Skip, E> {
            Ok(Skip)
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<Skip, E> {
            Ok(Skip)
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Skip, E> {
            Ok(Skip)
        }
        fn visit_str<E: de::Error>(self, _: &str) -> Result<Skip, E> {
            Ok(Skip)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Skip, E> {
            Ok(Skip)
        }
    }
}

use extract::Node;

#[cfg(test)]
mod tests {
    use super::*;

    /// `PathSet::extract` agrees with parsing the whole document and walking it.
    #[test]
    fn extract_matches_full_parse() {
        let docs: &[&str] = &[
            r#"{"a":{"b":[1,{"c":2}]},"t":31.5,"s":"x\u00e9","n":null}"#,
            r#"{"a":1,"a":{"b":2}}"#,
            r#"{"a":{"b":2},"a":3}"#,
            r#"[{"a":1},[true,false]]"#,
            r#"{"":{"":5},"0":"zero"}"#,
            r#"  {"a" : [ ] , "b":{}} "#,
            "42",
            r#""just a string""#,
            r#"{"a":1,"x":1e999}"#,
            r#"{"a":1}x"#,
            r#"{"a":"\ud800"}"#,
            r#"{"a":1,}"#,
            "",
        ];
        let paths = [
            "a", "a.b", "a.b.1.c", "a.b.0", "a.x", "t", "s", "n", "0", "0.a", "1.1", "", ".", "b",
            "a.b.01", "a.b.+1",
        ];
        let set = PathSet::new(paths);
        for doc in docs {
            let full: Result<Value, _> = serde_json::from_slice(doc.as_bytes());
            let got = set.extract(doc.as_bytes());
            match full {
                Err(_) => assert!(got.is_err(), "{doc:?}: {got:?}"),
                Ok(v) => {
                    let want: Vec<_> = paths.iter().map(|p| get_path(&v, p).cloned()).collect();
                    assert_eq!(got.unwrap(), want, "{doc:?}");
                }
            }
        }
        // Invalid UTF-8 in a skipped string is still an error, as in a full parse.
        assert!(set.extract(b"{\"pad\":\"\xff\",\"a\":1}").is_err());
        // Deep nesting hits serde_json's recursion limit either way.
        let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
        assert!(serde_json::from_str::<Value>(&deep).is_err());
        assert!(set.extract(deep.as_bytes()).is_err());
    }

    #[test]
    fn paths_through_objects_and_arrays() {
        let mut v: Value = serde_json::from_str(r#"{"a":{"b":[1,{"c":2}]}}"#).unwrap();
        assert_eq!(get_path(&v, "a.b.1.c"), Some(&Value::from(2)));
        assert_eq!(get_path(&v, "a.x"), None);
        assert_eq!(remove_path(&mut v, "a.b.0"), Some(Value::from(1)));
        assert!(set_path(&mut v, "a.new.deep", Value::from(true)));
        assert!(!set_path(&mut v, "a.b.9.x", Value::Null));
        assert!(rename_path(&mut v, "a.new", "top"));
        assert_eq!(
            v.to_string(),
            r#"{"a":{"b":[{"c":2}]},"top":{"deep":true}}"#
        );
    }
}
