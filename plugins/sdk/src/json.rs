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

#[cfg(test)]
mod tests {
    use super::*;

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
