//! Who takes the link next: a token bucket for `hub.max_bytes_per_sec` and strict priority
//! between the ready batches of each priority lane. Pure logic over `Instant`s, no clock reads.

use std::time::{Duration, Instant};

use er_protocol::TopicPartition;

/// Nanoseconds per second: tokens are counted in byte-nanoseconds so refills are exact.
const NANOS: i128 = 1_000_000_000;

/// A token bucket over bytes: `rate` bytes per second on average, at most `burst` bytes at once.
///
/// It starts full. A batch larger than the burst goes when the bucket is full and leaves it in
/// debt, which is paid back before anything else goes, so over any span `t` at most
/// `rate * t + max(burst, largest batch)` bytes pass.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    /// Bytes per second.
    rate: i128,
    /// Capacity, in byte-nanoseconds.
    burst: i128,
    /// Tokens held, in byte-nanoseconds; negative while in debt.
    tokens: i128,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket of `burst_bytes` refilled at `bytes_per_sec` (both at least 1).
    pub fn new(bytes_per_sec: u64, burst_bytes: u64, now: Instant) -> Self {
        let burst = i128::from(burst_bytes.max(1)) * NANOS;
        Self {
            rate: i128::from(bytes_per_sec.max(1)),
            burst,
            tokens: burst,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        // An `Instant` earlier than the last one (callers that sampled the clock before another
        // call) adds nothing rather than going back.
        if let Some(elapsed) = now.checked_duration_since(self.last) {
            self.tokens = (self.tokens + self.rate * elapsed.as_nanos() as i128).min(self.burst);
            self.last = now;
        }
    }

    /// Takes `bytes` if the bucket holds them (a batch larger than the burst: if the bucket is
    /// full); otherwise takes nothing and returns the instant it will hold them, barring other
    /// takes.
    pub fn take(&mut self, now: Instant, bytes: u64) -> Result<(), Instant> {
        self.refill(now);
        let want = i128::from(bytes) * NANOS;
        let need = want.min(self.burst);
        if self.tokens >= need {
            self.tokens -= want;
            return Ok(());
        }
        let missing = need - self.tokens;
        let wait_ns = (missing + self.rate - 1) / self.rate;
        Err(now + Duration::from_nanos(u64::try_from(wait_ns).unwrap_or(u64::MAX)))
    }
}

/// Whether a batch fits the in-flight budgets (`AgentConn::can_send`, `link_has_room`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Room {
    /// It may be sent.
    Yes,
    /// Its own partition has too much unacknowledged; other partitions' batches may go.
    PartitionFull,
    /// The connection has too much unacknowledged: nothing goes until acks arrive.
    LinkFull,
}

/// What the link does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Send the batch of this lane now; its tokens are taken.
    Send(usize),
    /// Batches wait for acks to free in-flight budget.
    AwaitAcks,
    /// The most urgent batch that the budget allows waits for the rate limit until then; lower
    /// lanes wait behind it.
    AwaitTokens(Instant),
    /// No batch is waiting.
    Idle,
}

/// Picks the next batch to send among the lanes' waiting batches (`heads`, highest priority
/// first; `None` for a lane with nothing waiting), given the in-flight budget and the rate
/// limit, if any.
///
/// Strict priority: the highest lane whose batch the budget allows goes first; while it waits
/// for tokens or for room on the link, lower lanes wait too (a lower lane's small batches must
/// not keep taking what the higher one waits for). A lane held only by its own partition's
/// budget is passed over, as it waits for its own acks.
pub fn next<'a>(
    heads: impl IntoIterator<Item = Option<(&'a TopicPartition, u64)>>,
    room: impl Fn(&TopicPartition, u64) -> Room,
    bucket: Option<&mut TokenBucket>,
    now: Instant,
) -> Next {
    let mut waiting = false;
    for (lane, head) in heads.into_iter().enumerate() {
        let Some((tp, bytes)) = head else {
            continue;
        };
        match room(tp, bytes) {
            Room::PartitionFull => waiting = true,
            Room::LinkFull => return Next::AwaitAcks,
            Room::Yes => {
                return match bucket {
                    None => Next::Send(lane),
                    Some(b) => match b.take(now, bytes) {
                        Ok(()) => Next::Send(lane),
                        Err(at) => Next::AwaitTokens(at),
                    },
                };
            }
        }
    }
    if waiting { Next::AwaitAcks } else { Next::Idle }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn starts_full_then_refills_at_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1_000, 500, t0);
        assert_eq!(b.take(t0, 500), Ok(()), "a full burst at once");
        assert_eq!(b.take(t0, 100), Err(t0 + ms(100)), "100 bytes at 1000 B/s");
        assert_eq!(b.take(t0 + ms(99), 100), Err(t0 + ms(100)));
        assert_eq!(b.take(t0 + ms(100), 100), Ok(()));
        // A long idle spell refills only up to the burst.
        assert_eq!(b.take(t0 + Duration::from_secs(60), 500), Ok(()));
        assert!(b.take(t0 + Duration::from_secs(60), 1).is_err());
    }

    #[test]
    fn a_batch_larger_than_the_burst_waits_for_a_full_bucket_then_leaves_a_debt() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1_000, 500, t0);
        assert_eq!(b.take(t0, 200), Ok(()));
        assert_eq!(b.take(t0, 2_000), Err(t0 + ms(200)), "until full again");
        assert_eq!(b.take(t0 + ms(200), 2_000), Ok(()));
        // 1500 bytes of debt, then 10 bytes: 1.51 s.
        assert_eq!(b.take(t0 + ms(200), 10), Err(t0 + ms(1_710)));
        assert_eq!(b.take(t0 + ms(1_710), 10), Ok(()));
    }

    #[test]
    fn an_earlier_instant_adds_nothing() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1_000, 100, t0 + ms(50));
        assert_eq!(b.take(t0 + ms(50), 100), Ok(()));
        assert!(b.take(t0, 1).is_err(), "no tokens from going back in time");
        assert_eq!(b.take(t0 + ms(51), 1), Ok(()));
    }

    /// A sender that always has a batch ready and sends whenever the bucket allows, with batch
    /// sizes from a fixed pseudo-random sequence (some above the burst). Over every window the
    /// bytes stay within `rate * window + burst + largest batch`, and over the whole run they
    /// reach the rate.
    #[test]
    fn a_saturating_sender_gets_the_rate_and_never_more() {
        let rate = 200_000u64;
        let burst = 64 * 1024u64;
        let t0 = Instant::now();
        let mut b = TokenBucket::new(rate, burst, t0);
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut size = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            1 + x % (burst + burst / 2)
        };
        let mut now = t0;
        let mut sent: Vec<(Instant, u64)> = Vec::new();
        let mut next = size();
        let end = t0 + Duration::from_secs(60);
        while now < end {
            match b.take(now, next) {
                Ok(()) => {
                    sent.push((now, next));
                    next = size();
                }
                Err(at) => {
                    assert!(at > now, "a wait always lies ahead");
                    now = at;
                }
            }
        }
        let largest = sent.iter().map(|s| s.1).max().unwrap();
        assert!(largest > burst, "the sequence includes oversized batches");
        for window in [ms(100), ms(1_000), Duration::from_secs(10)] {
            for (i, &(start, _)) in sent.iter().enumerate() {
                let bytes: u64 = sent[i..]
                    .iter()
                    .take_while(|(t, _)| *t < start + window)
                    .map(|s| s.1)
                    .sum();
                let bound = rate as f64 * window.as_secs_f64() + (burst + largest) as f64;
                assert!(
                    bytes as f64 <= bound,
                    "{bytes} bytes in {window:?} from {i}"
                );
            }
        }
        let total: u64 = sent.iter().map(|s| s.1).sum();
        let ideal = rate * 60;
        assert!(
            total >= ideal - largest && total <= ideal + burst + largest,
            "{total} bytes in 60 s at {rate} B/s"
        );
    }

    fn tp(t: &str) -> TopicPartition {
        TopicPartition::new(t, 0)
    }

    #[test]
    fn the_highest_lane_goes_first() {
        let (alarms, bulk) = (tp("alarms"), tp("bulk"));
        let now = Instant::now();
        let heads = [Some((&alarms, 10)), Some((&bulk, 10))];
        assert_eq!(next(heads, |_, _| Room::Yes, None, now), Next::Send(0));
        let heads = [None, Some((&bulk, 10))];
        assert_eq!(next(heads, |_, _| Room::Yes, None, now), Next::Send(1));
        assert_eq!(next([None, None], |_, _| Room::Yes, None, now), Next::Idle);
    }

    #[test]
    fn a_lane_waiting_for_tokens_holds_the_lanes_below_it() {
        let (alarms, bulk) = (tp("alarms"), tp("bulk"));
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1_000, 1_000, t0);
        assert_eq!(b.take(t0, 900), Ok(()));
        // The alarm needs 200 bytes, 100 are there; the bulk batch of 50 would fit but waits.
        let heads = [Some((&alarms, 200)), Some((&bulk, 50))];
        assert_eq!(
            next(heads, |_, _| Room::Yes, Some(&mut b), t0),
            Next::AwaitTokens(t0 + ms(100))
        );
        assert_eq!(
            next(heads, |_, _| Room::Yes, Some(&mut b), t0 + ms(100)),
            Next::Send(0)
        );
        assert_eq!(
            next(
                [None, Some((&bulk, 50))],
                |_, _| Room::Yes,
                Some(&mut b),
                t0 + ms(100)
            ),
            Next::AwaitTokens(t0 + ms(150)),
            "the alarm took the tokens"
        );
    }

    #[test]
    fn a_full_link_holds_every_lane_but_a_full_partition_only_its_own() {
        let (alarms, bulk) = (tp("alarms"), tp("bulk"));
        let now = Instant::now();
        let heads = [Some((&alarms, 10)), Some((&bulk, 10))];
        let alarms_partition_full = |t: &TopicPartition, _| {
            if t.topic == "alarms" {
                Room::PartitionFull
            } else {
                Room::Yes
            }
        };
        assert_eq!(next(heads, alarms_partition_full, None, now), Next::Send(1));
        assert_eq!(
            next(
                [Some((&alarms, 10)), None],
                alarms_partition_full,
                None,
                now
            ),
            Next::AwaitAcks
        );
        let link_full_for_alarms = |t: &TopicPartition, _| {
            if t.topic == "alarms" {
                Room::LinkFull
            } else {
                Room::Yes
            }
        };
        assert_eq!(
            next(heads, link_full_for_alarms, None, now),
            Next::AwaitAcks,
            "the smaller bulk batch would fit but must not take the room the alarm waits for"
        );
        // Tokens are only taken for the batch that goes.
        let mut b = TokenBucket::new(1_000, 10, now);
        assert_eq!(
            next(heads, link_full_for_alarms, Some(&mut b), now),
            Next::AwaitAcks
        );
        assert_eq!(b.take(now, 10), Ok(()), "still full");
    }
}
