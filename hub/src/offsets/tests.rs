//! The index against a brute-force model of committed records.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use proptest::prelude::*;

use super::*;

fn tp(t: &str, p: i32) -> TopicPartition {
    TopicPartition::new(t, p)
}

const SOURCES: [(&str, i32); 3] = [("a", 0), ("a", 1), ("b", 0)];
const DESTS: [(&str, i32); 4] = [("site.a", 0), ("site.a", 1), ("renamed", 0), ("renamed", 3)];

/// One batch: records of one source partition, per source offset step a gap and the
/// destinations of its copies (none = dropped, several = replaced by several records).
#[derive(Clone, Debug)]
struct BatchPlan {
    source: usize,
    steps: Vec<(i64, Vec<usize>)>,
    /// Offsets skipped after the last record (dropped tail) before the batch's next offset.
    tail: i64,
}

type TxnPlan = Vec<BatchPlan>;

fn batch_plan() -> impl Strategy<Value = BatchPlan> {
    let step = prop_oneof![
        // 1:1 to the default destination, consecutive: long runs.
        4 => Just((0i64, vec![0usize])),
        // filtered: a gap, then kept to one of the destinations.
        3 => (1i64..40, 0usize..4).prop_map(|(g, d)| (g, vec![d])),
        // dropped.
        1 => (0i64..3).prop_map(|g| (g, vec![])),
        // replaced by several records, possibly fanned out.
        1 => (0i64..3, prop::collection::vec(0usize..4, 2..4)).prop_map(|(g, d)| (g, d)),
        // a huge gap.
        1 => (1_000i64..1_000_000_000, 0usize..4).prop_map(|(g, d)| (g, vec![d])),
    ];
    (
        0usize..SOURCES.len(),
        prop::collection::vec(step, 0..40),
        0i64..3,
    )
        .prop_map(|(source, steps, tail)| BatchPlan {
            source,
            steps,
            tail,
        })
}

fn scenario() -> impl Strategy<Value = Vec<TxnPlan>> {
    prop::collection::vec(prop::collection::vec(batch_plan(), 1..4), 1..12)
}

/// Everything committed, as the destination topics would show it.
#[derive(Default)]
struct Model {
    /// (source, source offset, dest, dest offset) in commit order.
    records: Vec<(usize, i64, usize, i64)>,
    positions: HashMap<usize, i64>,
    dest_next: [i64; DESTS.len()],
}

impl Model {
    /// Runs one transaction as the writer would: records in send order get the next offsets
    /// of their destination, then a commit marker takes one offset in every destination written.
    fn commit(&mut self, txn: &TxnPlan) -> Vec<SourceEntries> {
        let mut b = EntriesBuilder::default();
        let mut written = BTreeSet::new();
        for batch in txn {
            let stp = tp(SOURCES[batch.source].0, SOURCES[batch.source].1);
            let prev = self.positions.get(&batch.source).copied();
            let mut off = prev.unwrap_or(0);
            let mut sent = Vec::new();
            for (gap, dests) in &batch.steps {
                off += gap;
                for &d in dests {
                    sent.push((off, d));
                }
                off += 1;
            }
            let next = off + batch.tail;
            let id = b.source(&stp, prev, next);
            for (src, d) in sent {
                let dst = self.dest_next[d];
                self.dest_next[d] += 1;
                written.insert(d);
                b.record(id, &tp(DESTS[d].0, DESTS[d].1), src, dst).unwrap();
                self.records.push((batch.source, src, d, dst));
            }
            self.positions.insert(batch.source, next);
        }
        for d in written {
            self.dest_next[d] += 1;
        }
        b.finish()
    }

    fn end(&self, dest: &TopicPartition) -> Option<i64> {
        DESTS
            .iter()
            .position(|(t, p)| *t == dest.topic && *p == dest.partition)
            .map(|d| self.dest_next[d])
    }

    /// Per destination the source ever fed: its records as (source offset, dest offset), in
    /// commit order.
    fn pairs(&self, source: usize) -> BTreeMap<usize, Vec<(i64, i64)>> {
        let mut out: BTreeMap<usize, Vec<(i64, i64)>> = BTreeMap::new();
        for &(s, src, d, dst) in &self.records {
            if s == source {
                out.entry(d).or_default().push((src, dst));
            }
        }
        out
    }

    /// The exact answer per destination: the first record with a source offset >= u.
    fn translate(
        &self,
        pairs: &BTreeMap<usize, Vec<(i64, i64)>>,
        source: usize,
        u: i64,
    ) -> BTreeMap<TopicPartition, Translation> {
        pairs
            .iter()
            .map(|(&d, recs)| {
                let dest = tp(DESTS[d].0, DESTS[d].1);
                // Source offsets never decrease within a pair, so the first match is the
                // lowest destination offset.
                let first = recs.iter().find(|r| r.0 >= u).map(|r| r.1);
                let t = match first {
                    Some(o) => Translation::Exact(o),
                    None if self.positions.get(&source).is_some_and(|&p| p >= u) => {
                        Translation::EndOffset(self.end(&dest).unwrap())
                    }
                    None => Translation::NotYet,
                };
                (dest, t)
            })
            .collect()
    }

    /// Maximal runs of a pair (first record per source offset), oldest first.
    fn runs(recs: &[(i64, i64)]) -> Vec<Run> {
        let mut runs: Vec<Run> = Vec::new();
        for &(src, dst) in recs {
            match runs.last_mut() {
                Some(r) if src <= r.last_src() => {}
                Some(r) if src == r.last_src() + 1 && dst == r.last_dst() + 1 => r.len += 1,
                _ => runs.push(Run { src, dst, len: 1 }),
            }
        }
        runs
    }

    fn one_to_one(&self, source: usize) -> bool {
        let dests: BTreeSet<usize> = self
            .records
            .iter()
            .filter(|r| r.0 == source)
            .map(|r| r.2)
            .collect();
        let [d] = dests.into_iter().collect::<Vec<_>>()[..] else {
            return false;
        };
        let mut seen = BTreeSet::new();
        self.records
            .iter()
            .filter(|r| r.2 == d)
            .all(|r| r.0 == source && seen.insert(r.1))
    }

    fn max_u(&self) -> i64 {
        self.positions.values().copied().max().unwrap_or(0) + 2
    }
}

fn answers(
    index: &OffsetIndex,
    model: &Model,
    source: usize,
    u: i64,
) -> BTreeMap<TopicPartition, Translation> {
    let stp = tp(SOURCES[source].0, SOURCES[source].1);
    index
        .translate(&stp, u, |d| model.end(d))
        .into_iter()
        .collect()
}

/// Interesting offsets to query: around every record and position, plus a sweep of small ones.
fn query_points(model: &Model) -> Vec<i64> {
    let mut us: BTreeSet<i64> = (-1..60).collect();
    for r in &model.records {
        us.extend([r.1 - 1, r.1, r.1 + 1]);
    }
    for &p in model.positions.values() {
        us.extend([p - 1, p, p + 1]);
    }
    us.insert(model.max_u());
    us.into_iter().collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Live index (entries applied after each commit) and an index rebuilt from the encoded
    /// records agree with the model; evicted windows answer TooOld and nothing else.
    #[test]
    fn index_matches_brute_force_model(
        txns in scenario(),
        cap in prop_oneof![Just(usize::MAX), 1usize..24],
        block_runs in 1usize..6,
        record_bytes in prop_oneof![Just(MAX_RECORD_BYTES), Just(1024usize)],
    ) {
        let mut model = Model::default();
        let mut live = OffsetIndex::with_block_runs(cap, block_runs);
        let mut log = Vec::new();
        for t in &txns {
            let entries = model.commit(t);
            live.apply(&entries);
            log.extend(encode(&entries, record_bytes));
        }
        let mut rebuilt = OffsetIndex::with_block_runs(cap, block_runs);
        for rec in &log {
            rebuilt.apply(&decode(rec).unwrap());
        }
        let us = query_points(&model);
        for (source, &(topic, partition)) in SOURCES.iter().enumerate() {
            let stp = tp(topic, partition);
            prop_assert_eq!(live.position(&stp), model.positions.get(&source).copied());
            let pairs = model.pairs(source);
            let runs: BTreeMap<usize, Vec<Run>> =
                pairs.iter().map(|(&d, r)| (d, Model::runs(r))).collect();
            let mut answered_below = BTreeSet::new();
            for &u in us.iter() {
                let want = model.translate(&pairs, source, u);
                let got = answers(&live, &model, source, u);
                prop_assert_eq!(&got, &answers(&rebuilt, &model, source, u), "rebuilt differs at u={}", u);
                prop_assert_eq!(got.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>());
                for (dest, t) in &got {
                    let d = DESTS.iter().position(|(t, p)| *t == dest.topic && *p == dest.partition).unwrap();
                    if *t == Translation::TooOld {
                        // Too old only below everything answered, and only for evicted runs:
                        // the newest max(1, cap + 1 - block_runs) runs are always kept.
                        prop_assert!(!answered_below.contains(&d), "TooOld above an answer at u={}", u);
                        let runs = &runs[&d];
                        let kept = cap.saturating_add(1).saturating_sub(block_runs).max(1);
                        prop_assert!(runs.len() > cap, "TooOld without eviction at u={}", u);
                        let oldest_kept = runs.len().saturating_sub(kept);
                        prop_assert!(oldest_kept > 0 && u <= runs[oldest_kept - 1].last_src(),
                            "u={} is inside the guaranteed window", u);
                    } else {
                        prop_assert_eq!(Some(t), want.get(dest), "u={} dest={}", u, dest);
                        answered_below.insert(d);
                    }
                }
            }
            if cap == usize::MAX {
                prop_assert_eq!(live.is_one_to_one(&stp), model.one_to_one(source), "source {}", source);
            }
        }
    }

    /// Losing a prefix of the index topic (retention) never yields a wrong offset: what is
    /// still covered answers exactly, the rest TooOld, and positions stay right.
    #[test]
    fn a_truncated_log_answers_exactly_or_too_old(
        txns in scenario(),
        drop in 0usize..12,
    ) {
        let mut model = Model::default();
        let mut log = Vec::new();
        for t in &txns {
            log.extend(encode(&model.commit(t), 1024));
        }
        let mut rebuilt = OffsetIndex::new(usize::MAX);
        for rec in log.iter().skip(drop) {
            rebuilt.apply(&decode(rec).unwrap());
        }
        for (&s, &p) in &model.positions {
            rebuilt.set_position(&tp(SOURCES[s].0, SOURCES[s].1), p);
        }
        for source in 0..SOURCES.len() {
            let pairs = model.pairs(source);
            for u in query_points(&model) {
                let want = model.translate(&pairs, source, u);
                for (dest, t) in answers(&rebuilt, &model, source, u) {
                    prop_assert!(t == Translation::TooOld || want.get(&dest) == Some(&t),
                        "u={} dest={} got {:?} want {:?}", u, dest, t, want.get(&dest));
                }
            }
        }
    }

    /// Arbitrary bytes never panic the decoder; cutting a valid record anywhere is an error.
    #[test]
    fn decode_survives_garbage_and_truncation(
        bytes in prop::collection::vec(any::<u8>(), 0..200),
        txns in scenario(),
    ) {
        let _ = decode(&bytes);
        let mut with_version = vec![FORMAT_VERSION];
        with_version.extend(&bytes);
        let _ = decode(&with_version);
        let mut model = Model::default();
        for t in &txns {
            for rec in encode(&model.commit(t), MAX_RECORD_BYTES) {
                for cut in 0..rec.len() {
                    prop_assert!(decode(&rec[..cut]).is_err(), "prefix of {} bytes accepted", cut);
                }
            }
        }
    }
}

#[test]
fn encode_decode_round_trips_exactly() {
    let mut b = EntriesBuilder::default();
    let s = b.source(&tp("orders", 3), Some(100), 5_000_000_000);
    let x = tp("site.orders", 3);
    let y = tp("renamed", 0);
    for (src, dest, dst) in [
        (100, &x, 7),
        (101, &x, 8),
        (102, &x, 9),
        (102, &y, 40), // fanned out
        (150, &x, 10), // gap
        (150, &x, 11), // replaced by two records
        (151, &x, 12),
        (4_999_999_999, &y, 1 << 40), // huge gaps
    ] {
        b.record(s, dest, src, dst).unwrap();
    }
    b.source(&tp("idle", 0), None, 0);
    let entries = b.finish();
    let recs = encode(&entries, MAX_RECORD_BYTES);
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0][0], FORMAT_VERSION);
    assert_eq!(decode(&recs[0]).unwrap(), entries);
}

#[test]
fn filtered_records_cost_about_one_byte() {
    let mut b = EntriesBuilder::default();
    let s = b.source(&tp("t", 0), Some(0), 1_000_000);
    let dest = tp("site.t", 0);
    for i in 0..100_000 {
        b.record(s, &dest, i * 10, i).unwrap(); // keep 10%
    }
    let entries = b.finish();
    let one = encode(&entries, MAX_RECORD_BYTES);
    assert_eq!(one.len(), 1);
    assert!(
        one[0].len() < 101_000,
        "{} bytes for 100k filtered records",
        one[0].len()
    );
    let recs = encode(&entries, 16 * 1024);
    assert!(recs.iter().all(|r| r.len() <= 16 * 1024 + 64));
    assert!(
        recs.len() > 1,
        "large transactions are split over several records"
    );

    let mut index = OffsetIndex::new(DEFAULT_MAX_ENTRIES_PER_PARTITION);
    for r in &recs {
        index.apply(&decode(r).unwrap());
    }
    let st = index.stats();
    assert_eq!(st.runs, 100_000);
    assert!(
        st.bytes < 150_000,
        "{} bytes in memory for 100k filtered runs",
        st.bytes
    );
    let src = tp("t", 0);
    let end = |_: &TopicPartition| Some(100_001);
    assert_eq!(
        index.translate(&src, 55, end),
        vec![(dest.clone(), Translation::Exact(6))]
    );
    assert_eq!(
        index.translate(&src, 999_995, end),
        vec![(dest.clone(), Translation::EndOffset(100_001))]
    );
    assert_eq!(
        index.translate(&src, 1_000_001, end),
        vec![(dest, Translation::NotYet)]
    );
}

#[test]
fn unfiltered_data_is_one_run_per_transaction() {
    let mut index = OffsetIndex::new(10);
    let dest = tp("site.t", 0);
    let mut dst = 0;
    for txn in 0..100i64 {
        let mut b = EntriesBuilder::default();
        let s = b.source(&tp("t", 0), Some(txn * 1000), (txn + 1) * 1000);
        for src in txn * 1000..(txn + 1) * 1000 {
            b.record(s, &dest, src, dst).unwrap();
            dst += 1;
        }
        dst += 1; // commit marker
        index.apply(&b.finish());
    }
    // 100 runs, cap 10: only the newest transactions are kept.
    let st = index.stats();
    assert!(st.runs <= 10, "{st:?}");
    let src = tp("t", 0);
    let end = |_: &TopicPartition| Some(dst);
    assert_eq!(
        index.translate(&src, 0, end),
        vec![(dest.clone(), Translation::TooOld)]
    );
    assert_eq!(
        index.translate(&src, 99_500, end),
        vec![(dest.clone(), Translation::Exact(99 * 1001 + 500))]
    );
    assert!(index.is_one_to_one(&src));
}

#[test]
fn unknown_versions_and_bad_records_are_rejected_with_a_clear_error() {
    assert_eq!(decode(&[]), Err(IndexDecodeError::Empty));
    let e = decode(&[2, 0]).unwrap_err();
    assert_eq!(e, IndexDecodeError::UnknownVersion { version: 2 });
    assert!(e.to_string().contains("format version 2"), "{e}");
    assert!(matches!(
        decode(&[FORMAT_VERSION, 0, 0]),
        Err(IndexDecodeError::TrailingBytes(1))
    ));
    // A run outside the transaction's source range.
    let mut b = EntriesBuilder::default();
    let s = b.source(&tp("t", 0), Some(10), 20);
    b.record(s, &tp("d", 0), 25, 0).unwrap();
    let rec = encode(&b.finish(), MAX_RECORD_BYTES).remove(0);
    let e = decode(&rec).unwrap_err();
    assert!(e.to_string().contains("outside"), "{e}");
}

#[test]
fn builder_refuses_offsets_out_of_send_order() {
    let mut b = EntriesBuilder::default();
    let s = b.source(&tp("t", 0), None, 10);
    b.record(s, &tp("d", 0), 5, 100).unwrap();
    assert!(b.record(s, &tp("d", 0), 6, 100).is_err());
    assert!(b.record(s, &tp("d", 0), 4, 101).is_err());
}

#[test]
fn end_offsets_are_withheld_while_a_commit_is_in_flight_or_after_the_writer_stopped() {
    let mut index = OffsetIndex::new(100);
    let src = tp("t", 0);
    let dest = tp("site.t", 0);
    let mut b = EntriesBuilder::default();
    let s = b.source(&src, None, 10);
    b.record(s, &dest, 3, 0).unwrap();
    index.apply(&b.finish());
    let end = |_: &TopicPartition| Some(2);
    assert_eq!(
        index.translate(&src, 8, end),
        vec![(dest.clone(), Translation::EndOffset(2))]
    );
    index.set_committing(true);
    assert_eq!(
        index.translate(&src, 8, end),
        vec![(dest.clone(), Translation::NotYet)]
    );
    assert_eq!(
        index.translate(&src, 2, end),
        vec![(dest.clone(), Translation::Exact(0))],
        "exact answers stay valid: later records land after them"
    );
    index.set_committing(false);
    index.mark_stopped();
    index.set_committing(false);
    assert_eq!(
        index.translate(&src, 8, end),
        vec![(dest, Translation::NotYet)]
    );
}

#[test]
fn positions_from_the_positions_topic_start_coverage_where_the_index_knows_nothing() {
    let mut index = OffsetIndex::new(100);
    let src = tp("t", 0);
    index.set_position(&src, 500);
    assert_eq!(index.position(&src), Some(500));
    assert!(index.dest_partitions(&src).is_empty());
    let dest = tp("site.t", 0);
    let mut b = EntriesBuilder::default();
    let s = b.source(&src, Some(500), 600);
    b.record(s, &dest, 550, 70).unwrap();
    index.apply(&b.finish());
    let end = |_: &TopicPartition| Some(72);
    assert_eq!(
        index.translate(&src, 499, end),
        vec![(dest.clone(), Translation::TooOld)]
    );
    assert_eq!(
        index.translate(&src, 500, end),
        vec![(dest.clone(), Translation::Exact(70))]
    );
    assert_eq!(index.dest_partitions(&src), vec![dest]);
}

#[test]
fn one_to_one_only_for_a_single_unshared_destination_without_copies() {
    let mut index = OffsetIndex::with_block_runs(2, 1);
    let a = tp("a", 0);
    let d = tp("site.a", 0);
    let mut b = EntriesBuilder::default();
    let s = b.source(&a, None, 3);
    b.record(s, &d, 0, 0).unwrap();
    b.record(s, &d, 0, 1).unwrap(); // replaced by two records
    b.record(s, &d, 2, 2).unwrap(); // 1 dropped
    index.apply(&b.finish());
    assert!(!index.is_one_to_one(&a));
    // Newer 1:1 data evicts the copies out of the window.
    let mut b = EntriesBuilder::default();
    let s = b.source(&a, Some(3), 10);
    b.record(s, &d, 5, 10).unwrap();
    b.record(s, &d, 8, 11).unwrap();
    index.apply(&b.finish());
    assert!(index.is_one_to_one(&a));
    // Another source partition feeding the same destination.
    let mut b = EntriesBuilder::default();
    let s = b.source(&tp("a", 1), None, 1);
    b.record(s, &d, 0, 12).unwrap();
    index.apply(&b.finish());
    assert!(!index.is_one_to_one(&a));
    assert!(!index.is_one_to_one(&tp("unknown", 0)));
}
