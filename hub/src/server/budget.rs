//! What sites may hold of the hub: bytes of frames read and not yet handed to the writers (per
//! connection, per site, in total: [`InboundBudget`] levels, taken before a frame's body is
//! read), connections per site and in total, and TLS handshakes under way (above a threshold,
//! unvalidated clients get a QUIC Retry). Every buffer a site can fill is a budget in bytes; a
//! site at its budget waits, unread, under QUIC flow control, and the others keep theirs.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use er_net::wire::InboundBudget;
use tokio::sync::Semaphore;

use crate::config::LimitsConfig;

/// The hub's budgets and counts.
#[derive(Debug)]
pub(super) struct Budgets {
    limits: LimitsConfig,
    total: Arc<Semaphore>,
    sites: Mutex<HashMap<String, SiteEntry>>,
    connections: AtomicUsize,
    handshakes: AtomicUsize,
}

#[derive(Debug)]
struct SiteEntry {
    connections: usize,
    budget: Arc<Semaphore>,
}

/// What happens to a new QUIC connection attempt.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Arrival {
    /// Handshake it.
    Accept,
    /// Ask the client to prove its address first (QUIC Retry).
    Retry,
    /// Refuse: the hub holds `limits.max_connections`.
    Full,
    /// Refuse for now: `limits.max_handshakes` are under way.
    Busy,
}

/// A connection counted against the hub's total; released on drop.
#[derive(Debug)]
pub(super) struct ConnectionSlot {
    budgets: Arc<Budgets>,
    handshaking: bool,
}

/// A connection counted against its site; carries the connection's byte budget. Released on
/// drop.
#[derive(Debug)]
pub(super) struct SiteSlot {
    budgets: Arc<Budgets>,
    alias: String,
    /// Connection, site and hub levels, in that order.
    pub(super) budget: InboundBudget,
}

impl Budgets {
    pub(super) fn new(limits: &LimitsConfig) -> Arc<Self> {
        let total = usize::try_from(limits.inbound_bytes)
            .unwrap_or(usize::MAX)
            .min(Semaphore::MAX_PERMITS);
        Arc::new(Self {
            limits: limits.clone(),
            total: Arc::new(Semaphore::new(total)),
            sites: Mutex::new(HashMap::new()),
            connections: AtomicUsize::new(0),
            handshakes: AtomicUsize::new(0),
        })
    }

    /// Decides what to do with a connection attempt; `address_validated`: QUIC validated the
    /// client's address (it came back with a Retry token).
    pub(super) fn arrival(&self, address_validated: bool) -> Arrival {
        if self.connections.load(Ordering::Acquire) >= self.limits.max_connections {
            Arrival::Full
        } else if self.handshakes.load(Ordering::Acquire) >= self.limits.max_handshakes {
            Arrival::Busy
        } else if !address_validated
            && self.handshakes.load(Ordering::Acquire) >= self.limits.retry_above_handshakes
        {
            Arrival::Retry
        } else {
            Arrival::Accept
        }
    }

    /// Counts an accepted connection, handshaking until [`ConnectionSlot::handshake_done`].
    pub(super) fn connection(self: &Arc<Self>) -> ConnectionSlot {
        self.connections.fetch_add(1, Ordering::AcqRel);
        self.handshakes.fetch_add(1, Ordering::AcqRel);
        ConnectionSlot {
            budgets: self.clone(),
            handshaking: true,
        }
    }

    /// Counts a connection of `alias`; `Err` with the number it holds if that is
    /// `limits.max_connections_per_site` already.
    pub(super) fn site(self: &Arc<Self>, alias: &str) -> Result<SiteSlot, usize> {
        let mut sites = self.sites.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = sites.entry(alias.to_owned()).or_insert_with(|| SiteEntry {
            connections: 0,
            budget: Arc::new(Semaphore::new(self.limits.site_inbound_bytes as usize)),
        });
        if entry.connections >= self.limits.max_connections_per_site {
            return Err(entry.connections);
        }
        entry.connections += 1;
        let connection = Arc::new(Semaphore::new(
            self.limits.connection_inbound_bytes as usize,
        ));
        let budget = InboundBudget::unlimited()
            .and(connection)
            .and(entry.budget.clone())
            .and(self.total.clone());
        Ok(SiteSlot {
            budgets: self.clone(),
            alias: alias.to_owned(),
            budget,
        })
    }

    /// Bytes of frames held hub-wide right now.
    pub(super) fn buffered_bytes(&self) -> u64 {
        let size = usize::try_from(self.limits.inbound_bytes)
            .unwrap_or(usize::MAX)
            .min(Semaphore::MAX_PERMITS);
        (size - self.total.available_permits()) as u64
    }
}

impl ConnectionSlot {
    /// The connection's handshake ended (either way).
    pub(super) fn handshake_done(&mut self) {
        if std::mem::take(&mut self.handshaking) {
            self.budgets.handshakes.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.handshake_done();
        self.budgets.connections.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Drop for SiteSlot {
    fn drop(&mut self) {
        let mut sites = self
            .budgets
            .sites
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(e) = sites.get_mut(&self.alias) {
            e.connections -= 1;
            if e.connections == 0 {
                sites.remove(&self.alias);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> LimitsConfig {
        LimitsConfig {
            connection_inbound_bytes: 100,
            site_inbound_bytes: 150,
            inbound_bytes: 200,
            max_connections_per_site: 2,
            max_connections: 3,
            retry_above_handshakes: 1,
            max_handshakes: 2,
            ..LimitsConfig::default()
        }
    }

    #[tokio::test]
    async fn frames_wait_for_the_tightest_level_and_return_their_bytes() {
        let b = Budgets::new(&limits());
        let a1 = b.site("a").unwrap();
        let a2 = b.site("a").unwrap();
        let c = b.site("c").unwrap();
        // One connection holds at most its own budget.
        let first = a1.budget.take(100).await;
        let wait = std::time::Duration::from_millis(50);
        assert!(
            tokio::time::timeout(wait, a1.budget.take(1)).await.is_err(),
            "the connection's budget is spent"
        );
        // The site's second connection gets what is left of the site's budget.
        let second = a2.budget.take(50).await;
        assert!(
            tokio::time::timeout(wait, a2.budget.take(1)).await.is_err(),
            "the site's budget is spent"
        );
        // Another site draws on the hub's total: 50 left.
        assert_eq!(b.buffered_bytes(), 150);
        let third = c.budget.take(50).await;
        assert!(
            tokio::time::timeout(wait, c.budget.take(1)).await.is_err(),
            "the hub's budget is spent"
        );
        drop((first, second, third));
        assert_eq!(b.buffered_bytes(), 0);
        let again = c.budget.take(100).await;
        assert_eq!(again.bytes(), 100);
    }

    #[test]
    fn connections_are_capped_per_site_and_in_total_and_retried_under_handshakes() {
        let b = Budgets::new(&limits());
        let _a1 = b.site("a").unwrap();
        let a2 = b.site("a").unwrap();
        assert_eq!(b.site("a").err(), Some(2));
        drop(a2);
        let _a3 = b.site("a").expect("a slot came free");

        assert_eq!(b.arrival(false), Arrival::Accept);
        let mut c1 = b.connection();
        assert_eq!(b.arrival(false), Arrival::Retry, "one handshake under way");
        assert_eq!(b.arrival(true), Arrival::Accept, "a validated address");
        let mut c2 = b.connection();
        assert_eq!(
            b.arrival(true),
            Arrival::Busy,
            "max_handshakes under way, even for a validated address"
        );
        c1.handshake_done();
        c2.handshake_done();
        assert_eq!(b.arrival(false), Arrival::Accept);
        let _c3 = b.connection();
        assert_eq!(b.arrival(true), Arrival::Full);
        drop(c1);
        assert_eq!(b.arrival(true), Arrival::Accept);
    }
}
