//! Which hub addresses the agent dials, in which order: redirect targets first, then the address
//! that last worked, then the configured list; every address a name resolves to, each once a pass.

use std::collections::{HashSet, VecDeque};
use std::fmt;
use std::net::SocketAddr;

/// Redirects in a row (without a welcome in between) followed at once; the next ones wait for
/// the reconnect backoff, so two hubs that send a site to each other cannot spin.
pub const MAX_REDIRECTS_IN_A_ROW: u32 = 3;

/// A hub address as configured or named in a redirect: a DNS name or an IP literal, and a port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HubAddress {
    /// DNS name or IP literal (IPv6 without brackets).
    pub host: String,
    /// UDP port.
    pub port: u16,
}

impl HubAddress {
    /// Parses `host:port` (IPv6 literals as `[addr]:port`); the error says what is wrong.
    pub fn parse(address: &str) -> Result<Self, String> {
        let (host, port) = split_host_port(address)?;
        Ok(Self { host, port })
    }

    /// Whether the host is an IPv4 literal (no name to resolve, no IPv6 needed).
    pub fn is_ipv4_literal(&self) -> bool {
        self.host.parse::<std::net::Ipv4Addr>().is_ok()
    }
}

/// Splits `host:port` (IPv6 literals in brackets) into host and port.
fn split_host_port(address: &str) -> Result<(String, u16), String> {
    let (host, port) = if let Some(rest) = address.strip_prefix('[') {
        let (h, p) = rest
            .split_once("]:")
            .ok_or_else(|| format!("{address:?} is not `[ipv6]:port`"))?;
        (h, p)
    } else {
        address
            .rsplit_once(':')
            .ok_or_else(|| format!("{address:?} is not `host:port`"))?
    };
    if host.is_empty() || host.contains(':') && !address.starts_with('[') {
        return Err(format!(
            "{address:?} is not `host:port` (write IPv6 addresses as `[addr]:port`)"
        ));
    }
    if host.chars().any(|c| c.is_whitespace() || c == '/') {
        return Err(format!(
            "{address:?}: {host:?} is not a host name or IP address"
        ));
    }
    let port: u16 = port
        .parse()
        .map_err(|_| format!("{address:?}: port {port:?} is not a number from 1 to 65535"))?;
    if port == 0 {
        return Err(format!("{address:?}: port 0 cannot be connected to"));
    }
    Ok((host.to_owned(), port))
}

impl fmt::Display for HubAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// One connection attempt's target: an address an entry resolved to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The configured or redirected entry (its host is the default TLS server name).
    pub entry: HubAddress,
    /// The socket address dialled.
    pub addr: SocketAddr,
}

/// What the agent does after a redirect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterRedirect {
    /// Dial the redirect's addresses at once.
    Follow,
    /// Too many redirects in a row without a welcome: wait for the reconnect backoff first.
    BackOff {
        /// Redirects in a row so far.
        in_a_row: u32,
    },
}

/// The agent's hub addresses across connection attempts: the configured list, the targets of
/// the latest redirect, and the candidate that last got a welcome.
#[derive(Debug)]
pub struct HubList {
    configured: Vec<HubAddress>,
    redirect: Vec<HubAddress>,
    sticky: Option<Candidate>,
    redirects_in_a_row: u32,
}

impl HubList {
    /// The configured addresses, in the order they are tried.
    pub fn new(configured: Vec<HubAddress>) -> Self {
        Self {
            configured,
            redirect: Vec::new(),
            sticky: None,
            redirects_in_a_row: 0,
        }
    }

    /// Starts a pass over the candidates: the latest redirect's targets (used by this pass
    /// only), the entry that last got a welcome, then the configured entries; each entry once.
    pub fn pass(&mut self) -> Pass {
        let mut seen = HashSet::new();
        let entries = std::mem::take(&mut self.redirect)
            .into_iter()
            .chain(self.sticky.iter().map(|c| c.entry.clone()))
            .chain(self.configured.iter().cloned())
            .filter(|e| seen.insert(e.clone()))
            .collect();
        Pass {
            entries,
            sticky: self.sticky.clone(),
            dialled: HashSet::new(),
        }
    }

    /// `c` got a welcome: later passes start from it, and the redirect count starts over.
    pub fn welcomed(&mut self, c: &Candidate) {
        self.sticky = Some(c.clone());
        self.redirects_in_a_row = 0;
    }

    /// A hub sent us to `targets` (best first, not empty): the next pass dials them before
    /// anything else.
    pub fn redirected(&mut self, targets: Vec<HubAddress>) -> AfterRedirect {
        self.redirect = targets;
        self.redirects_in_a_row = self.redirects_in_a_row.saturating_add(1);
        if self.redirects_in_a_row > MAX_REDIRECTS_IN_A_ROW {
            AfterRedirect::BackOff {
                in_a_row: self.redirects_in_a_row,
            }
        } else {
            AfterRedirect::Follow
        }
    }

    /// The candidate that last got a welcome, if any.
    pub fn sticky(&self) -> Option<&Candidate> {
        self.sticky.as_ref()
    }
}

/// One pass over the candidates, from [`HubList::pass`].
#[derive(Debug)]
pub struct Pass {
    entries: VecDeque<HubAddress>,
    sticky: Option<Candidate>,
    dialled: HashSet<SocketAddr>,
}

impl Pass {
    /// The next entry to resolve, or `None` when the pass is over.
    pub fn next_entry(&mut self) -> Option<HubAddress> {
        self.entries.pop_front()
    }

    /// The candidates of `entry`, from the addresses it resolved to (in the resolver's
    /// order): the one that last got a welcome first; addresses dialled earlier in this pass
    /// (through another entry) are left out.
    pub fn dial_order(
        &mut self,
        entry: &HubAddress,
        resolved: impl IntoIterator<Item = SocketAddr>,
    ) -> Vec<Candidate> {
        let mut addrs: Vec<SocketAddr> = resolved.into_iter().collect();
        if let Some(s) = self.sticky.as_ref().filter(|s| s.entry == *entry)
            && let Some(i) = addrs.iter().position(|a| *a == s.addr)
        {
            let first = addrs.remove(i);
            addrs.insert(0, first);
        }
        addrs
            .into_iter()
            .filter(|a| self.dialled.insert(*a))
            .map(|addr| Candidate {
                entry: entry.clone(),
                addr,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_forms() {
        assert_eq!(split_host_port("[::1]:4433").unwrap(), ("::1".into(), 4433));
        assert_eq!(
            split_host_port("10.0.0.1:1").unwrap(),
            ("10.0.0.1".into(), 1)
        );
        for bad in [
            "",
            ":4433",
            "host",
            "host:",
            "host:99999",
            "a b:1",
            "::1:4433",
        ] {
            assert!(split_host_port(bad).is_err(), "{bad}");
        }
    }

    fn a(s: &str) -> HubAddress {
        HubAddress::parse(s).unwrap()
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// A fake resolver: names to addresses.
    fn resolve(entry: &HubAddress) -> Vec<SocketAddr> {
        match entry.host.as_str() {
            "hubs.example" => vec![sa("[2001:db8::1]:4433"), sa("10.0.0.1:4433")],
            "hub-b.example" => vec![sa("10.0.0.2:4433")],
            "alias.example" => vec![sa("10.0.0.1:4433")],
            "gone.example" => vec![],
            literal => vec![SocketAddr::new(literal.parse().unwrap(), entry.port)],
        }
    }

    /// Every candidate of a pass, in dial order, as socket addresses.
    fn order(list: &mut HubList) -> Vec<SocketAddr> {
        let mut pass = list.pass();
        let mut out = Vec::new();
        while let Some(e) = pass.next_entry() {
            out.extend(pass.dial_order(&e, resolve(&e)).into_iter().map(|c| c.addr));
        }
        out
    }

    fn candidate(entry: &str, addr: &str) -> Candidate {
        Candidate {
            entry: a(entry),
            addr: sa(addr),
        }
    }

    #[test]
    fn a_pass_walks_the_list_in_order_and_every_address_of_each_name() {
        let mut list = HubList::new(vec![
            a("hubs.example:4433"),
            a("hub-b.example:4433"),
            a("[::1]:7"),
        ]);
        let want = [
            "[2001:db8::1]:4433",
            "10.0.0.1:4433",
            "10.0.0.2:4433",
            "[::1]:7",
        ]
        .map(sa);
        assert_eq!(order(&mut list), want);
        assert_eq!(order(&mut list), want, "the same again: nothing worked");
    }

    #[test]
    fn an_address_is_dialled_once_a_pass_and_empty_names_are_skipped() {
        let mut list = HubList::new(vec![
            a("gone.example:4433"),
            a("hubs.example:4433"),
            a("alias.example:4433"),
            a("hubs.example:4433"),
            a("10.0.0.2:4433"),
            a("hub-b.example:4433"),
        ]);
        assert_eq!(
            order(&mut list),
            ["[2001:db8::1]:4433", "10.0.0.1:4433", "10.0.0.2:4433"].map(sa)
        );
    }

    #[test]
    fn the_candidate_that_got_a_welcome_comes_first_next_time() {
        let mut list = HubList::new(vec![
            a("10.0.0.9:4433"),
            a("hubs.example:4433"),
            a("hub-b.example:4433"),
        ]);
        assert_eq!(list.sticky(), None);
        list.welcomed(&candidate("hubs.example:4433", "10.0.0.1:4433"));
        assert_eq!(
            order(&mut list),
            [
                "10.0.0.1:4433",
                "[2001:db8::1]:4433",
                "10.0.0.9:4433",
                "10.0.0.2:4433"
            ]
            .map(sa),
            "the sticky address, the rest of its name, then the list in order"
        );
        list.welcomed(&candidate("hub-b.example:4433", "10.0.0.2:4433"));
        assert_eq!(
            order(&mut list),
            [
                "10.0.0.2:4433",
                "10.0.0.9:4433",
                "[2001:db8::1]:4433",
                "10.0.0.1:4433"
            ]
            .map(sa),
            "stickiness moves to the latest welcome"
        );
    }

    #[test]
    fn a_sticky_address_its_name_no_longer_resolves_to_is_not_dialled() {
        let mut list = HubList::new(vec![a("hub-b.example:4433")]);
        list.welcomed(&candidate("hub-b.example:4433", "10.0.0.99:4433"));
        assert_eq!(order(&mut list), [sa("10.0.0.2:4433")]);
    }

    #[test]
    fn redirect_targets_come_first_for_one_pass_and_stick_once_welcomed() {
        let mut list = HubList::new(vec![a("10.0.0.9:4433"), a("hub-b.example:4433")]);
        list.welcomed(&candidate("10.0.0.9:4433", "10.0.0.9:4433"));
        assert_eq!(
            list.redirected(vec![a("10.0.0.7:4433"), a("hub-b.example:4433")]),
            AfterRedirect::Follow
        );
        assert_eq!(
            order(&mut list),
            ["10.0.0.7:4433", "10.0.0.2:4433", "10.0.0.9:4433"].map(sa),
            "targets in order, then the sticky entry, then the rest of the list"
        );
        assert_eq!(
            order(&mut list),
            ["10.0.0.9:4433", "10.0.0.2:4433"].map(sa),
            "a redirect is followed by one pass only"
        );
        list.redirected(vec![a("10.0.0.7:4433")]);
        let mut pass = list.pass();
        let target = pass.next_entry().unwrap();
        let c = pass.dial_order(&target, resolve(&target)).remove(0);
        list.welcomed(&c);
        assert_eq!(
            order(&mut list),
            ["10.0.0.7:4433", "10.0.0.9:4433", "10.0.0.2:4433"].map(sa),
            "the redirect target that welcomed us is where we start next time"
        );
    }

    #[test]
    fn redirects_in_a_row_without_a_welcome_back_off() {
        let mut list = HubList::new(vec![a("10.0.0.1:1")]);
        let to = || vec![a("10.0.0.2:1")];
        for _ in 0..MAX_REDIRECTS_IN_A_ROW {
            assert_eq!(list.redirected(to()), AfterRedirect::Follow);
        }
        assert_eq!(
            list.redirected(to()),
            AfterRedirect::BackOff {
                in_a_row: MAX_REDIRECTS_IN_A_ROW + 1
            }
        );
        assert_eq!(
            list.redirected(to()),
            AfterRedirect::BackOff {
                in_a_row: MAX_REDIRECTS_IN_A_ROW + 2
            },
            "and every one after it"
        );
        assert_eq!(
            order(&mut list),
            ["10.0.0.2:1", "10.0.0.1:1"].map(sa),
            "after the backoff the redirect still comes first"
        );
        list.welcomed(&candidate("10.0.0.2:1", "10.0.0.2:1"));
        assert_eq!(
            list.redirected(to()),
            AfterRedirect::Follow,
            "a welcome starts the count over"
        );
    }

    #[test]
    fn addresses_print_as_they_parse() {
        for s in ["hub.example:4433", "10.0.0.1:1", "[2001:db8::1]:4433"] {
            assert_eq!(a(s).to_string(), s);
        }
        assert!(a("10.0.0.1:1").is_ipv4_literal());
        assert!(!a("[::1]:1").is_ipv4_literal());
        assert!(!a("hub.example:1").is_ipv4_literal());
        assert!(HubAddress::parse("hub.example").is_err());
    }
}
