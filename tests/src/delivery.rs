//! Checking what reached the central cluster against what was produced at the edge: every
//! record exactly once, in order per partition (records keep their source partition).
//!
//! Tests produce records that carry a sequence number (as decimal text in the key or value),
//! read the destination back as [`Seqs`] and compare it with what each partition should hold:
//!
//! ```no_run
//! # fn f(records: &[er_tests::client::Record]) -> anyhow::Result<()> {
//! use er_tests::delivery::{self, SeqIn};
//! let got = delivery::seqs_by_partition(records, SeqIn::Value)?;
//! delivery::assert_exactly_once_in_order("site.events", &got, &delivery::round_robin(1_000, 4), "logs");
//! # Ok(()) }
//! ```

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;

use anyhow::Context as _;

use crate::client::Record;

/// Sequence numbers per partition, in the order they were read (or are expected).
pub type Seqs = BTreeMap<i32, Vec<i64>>;

/// How many sequence numbers a fault line lists before it only counts.
const LISTED: usize = 10;

/// Where a record carries its sequence number, as decimal text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqIn {
    /// The record key.
    Key,
    /// The record value.
    Value,
}

/// Sequence numbers `0..count` spread over `partitions`, sequence `i` on partition
/// `i % partitions`: what a partition holds when the test produced them that way.
pub fn round_robin(count: usize, partitions: i32) -> Seqs {
    let mut out: Seqs = (0..partitions).map(|p| (p, Vec::new())).collect();
    for i in 0..count {
        let p = (i % partitions as usize) as i32;
        out.entry(p).or_default().push(i as i64);
    }
    out
}

/// The sequence number of each record, per partition, in the order of `records`. A record
/// without one (not decimal text where `field` says) is an error naming its partition and offset.
pub fn seqs_by_partition(records: &[Record], field: SeqIn) -> anyhow::Result<Seqs> {
    let mut out = Seqs::new();
    for r in records {
        let bytes = match field {
            SeqIn::Key => r.key.as_deref(),
            SeqIn::Value => r.value.as_deref(),
        };
        let seq = bytes
            .and_then(|b| std::str::from_utf8(b).ok())
            .and_then(|s| s.parse().ok())
            .with_context(|| {
                format!(
                    "{}/{} offset {}: {field:?} {:?} is not a sequence number",
                    r.topic,
                    r.partition,
                    r.offset,
                    bytes.map(String::from_utf8_lossy)
                )
            })?;
        out.entry(r.partition).or_default().push(seq);
    }
    Ok(out)
}

/// What is wrong with `got` against `want`, one line per partition at fault (empty when every
/// wanted sequence number was read exactly once, in the wanted order, and nothing else was):
/// the missing, duplicated and unexpected sequence numbers, and the first one read out of order.
pub fn faults(got: &Seqs, want: &Seqs) -> Vec<String> {
    let partitions: std::collections::BTreeSet<i32> =
        got.keys().chain(want.keys()).copied().collect();
    let mut out = Vec::new();
    for p in partitions {
        let have = got.get(&p).map_or(&[][..], Vec::as_slice);
        let want = want.get(&p).map_or(&[][..], Vec::as_slice);
        if have == want {
            continue;
        }
        let position: HashMap<i64, usize> = want.iter().enumerate().map(|(i, &s)| (s, i)).collect();
        let mut times: HashMap<i64, usize> = HashMap::new();
        for &s in have {
            *times.entry(s).or_default() += 1;
        }
        let missing: Vec<i64> = want
            .iter()
            .copied()
            .filter(|s| !times.contains_key(s))
            .collect();
        let mut duplicated: Vec<(i64, usize)> = times
            .iter()
            .filter(|&(_, &n)| n > 1)
            .map(|(&s, &n)| (s, n))
            .collect();
        duplicated.sort_unstable();
        let mut unexpected: Vec<i64> = times
            .keys()
            .copied()
            .filter(|s| !position.contains_key(s))
            .collect();
        unexpected.sort_unstable();
        // Order among the wanted ones, each at its first read (a repeat is a duplicate).
        let mut seen = HashSet::new();
        let mut last: Option<(i64, usize)> = None;
        let mut first_inversion = None;
        let mut inversions = 0;
        for &s in have {
            let Some(&pos) = position.get(&s) else {
                continue;
            };
            if !seen.insert(s) {
                continue;
            }
            if let Some((prev, prev_pos)) = last
                && pos < prev_pos
            {
                inversions += 1;
                first_inversion.get_or_insert((s, prev));
            }
            last = Some((s, pos));
        }

        let mut line = format!(
            "partition {p}: read {} of {} records;",
            have.len(),
            want.len()
        );
        if !missing.is_empty() {
            write!(line, " {} missing ({})", missing.len(), list(&missing)).expect("to a String");
        }
        if !duplicated.is_empty() {
            let d: Vec<String> = duplicated
                .iter()
                .map(|(s, n)| format!("{s} read {n} times"))
                .collect();
            write!(line, " {} duplicated ({})", d.len(), list(&d)).expect("to a String");
        }
        if !unexpected.is_empty() {
            write!(
                line,
                " {} unexpected ({})",
                unexpected.len(),
                list(&unexpected)
            )
            .expect("to a String");
        }
        if let Some((s, prev)) = first_inversion {
            write!(
                line,
                " {inversions} out of order (first: {s} read after {prev})"
            )
            .expect("to a String");
        }
        out.push(line);
    }
    out
}

/// Asserts that `got` is exactly `want` (see [`faults`]); the failure names `what` (the topic)
/// and every partition at fault, then `logs`.
#[track_caller]
pub fn assert_exactly_once_in_order(what: &str, got: &Seqs, want: &Seqs, logs: &str) {
    let faults = faults(got, want);
    assert!(
        faults.is_empty(),
        "{what}: not every record exactly once, in order per partition:\n  {}\n{logs}",
        faults.join("\n  ")
    );
}

fn list<T: std::fmt::Display>(items: &[T]) -> String {
    let mut s = items
        .iter()
        .take(LISTED)
        .map(T::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    if items.len() > LISTED {
        s.push_str(", ...");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seqs(parts: &[(i32, &[i64])]) -> Seqs {
        parts.iter().map(|(p, s)| (*p, s.to_vec())).collect()
    }

    #[test]
    fn round_robin_spreads_sequence_numbers_over_the_partitions() {
        assert_eq!(round_robin(5, 2), seqs(&[(0, &[0, 2, 4]), (1, &[1, 3])]));
        assert_eq!(round_robin(1, 3), seqs(&[(0, &[0]), (1, &[]), (2, &[])]));
    }

    #[test]
    fn each_fault_is_named_with_its_partition_and_sequence_numbers() {
        let want = seqs(&[(0, &[0, 1, 2, 3]), (1, &[10, 11])]);
        let cases: &[(&str, Seqs, &[&str])] = &[
            ("exact", want.clone(), &[]),
            (
                "missing",
                seqs(&[(0, &[0, 3]), (1, &[10, 11])]),
                &["partition 0: read 2 of 4 records; 2 missing (1, 2)"],
            ),
            (
                "duplicated after a redelivery",
                seqs(&[(0, &[0, 1, 2, 1, 2, 3]), (1, &[10, 11])]),
                &[
                    "partition 0: read 6 of 4 records; 2 duplicated (1 read 2 times, 2 read 2 times)",
                ],
            ),
            (
                "out of order",
                seqs(&[(0, &[0, 2, 1, 3]), (1, &[10, 11])]),
                &["partition 0: read 4 of 4 records; 1 out of order (first: 1 read after 2)"],
            ),
            (
                "in the wrong partition",
                seqs(&[(0, &[0, 1, 2, 3, 11]), (1, &[10])]),
                &[
                    "partition 0: read 5 of 4 records; 1 unexpected (11)",
                    "partition 1: read 1 of 2 records; 1 missing (11)",
                ],
            ),
            (
                "a partition never read",
                seqs(&[(0, &[0, 1, 2, 3])]),
                &["partition 1: read 0 of 2 records; 2 missing (10, 11)"],
            ),
            (
                "an empty partition read is no fault",
                seqs(&[(0, &[0, 1, 2, 3]), (1, &[10, 11]), (2, &[])]),
                &[],
            ),
        ];
        for (name, got, expected) in cases {
            assert_eq!(faults(got, &want), *expected, "{name}");
        }
    }

    #[test]
    fn long_lists_are_cut() {
        let want = seqs(&[(0, &(0..100).collect::<Vec<_>>())]);
        let f = faults(&seqs(&[(0, &[])]), &want);
        assert_eq!(
            f,
            ["partition 0: read 0 of 100 records; 100 missing (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, ...)"]
        );
    }

    #[test]
    #[should_panic(
        expected = "site.t: not every record exactly once, in order per partition:\n  \
                               partition 0: read 1 of 2 records; 1 missing (1)\nthe logs"
    )]
    fn the_assertion_names_the_topic_and_the_faults() {
        assert_exactly_once_in_order(
            "site.t",
            &seqs(&[(0, &[0])]),
            &seqs(&[(0, &[0, 1])]),
            "the logs",
        );
    }

    #[test]
    fn sequence_numbers_come_from_the_key_or_value_and_a_bad_one_is_named() {
        let rec = |partition, offset, key: &str, value: &str| Record {
            topic: "t".into(),
            partition,
            offset,
            key: Some(key.into()),
            value: Some(value.into()),
            headers: Vec::new(),
            timestamp: rdkafka::Timestamp::NotAvailable,
        };
        let records = [
            rec(0, 0, "k0", "0"),
            rec(1, 0, "k1", "1"),
            rec(0, 1, "k2", "2"),
        ];
        assert_eq!(
            seqs_by_partition(&records, SeqIn::Value).unwrap(),
            seqs(&[(0, &[0, 2]), (1, &[1])])
        );
        let e = seqs_by_partition(&records, SeqIn::Key).unwrap_err();
        assert_eq!(
            e.to_string(),
            "t/0 offset 0: Key Some(\"k0\") is not a sequence number"
        );
    }
}
