//! Peer-supplied text made safe for logs: escaped and cut to a small bound.

use std::fmt;

/// Characters of peer-supplied text a log line shows at most.
pub const UNTRUSTED_LOG_CHARS: usize = 64;

/// Displays a string a peer sent (a site claim, an agent version, a SPIFFE ID) for a log line:
/// control characters and quotes escaped (`char::escape_debug`), at most
/// [`UNTRUSTED_LOG_CHARS`] characters, then `…(N bytes)` naming the full length. A peer cannot
/// forge log lines or make every connection log kilobytes.
#[derive(Clone, Copy)]
pub struct Untrusted<'a>(pub &'a str);

impl fmt::Display for Untrusted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in self.0.chars().take(UNTRUSTED_LOG_CHARS) {
            write!(f, "{}", c.escape_debug())?;
        }
        if self.0.chars().nth(UNTRUSTED_LOG_CHARS).is_some() {
            write!(f, "…({} bytes)", self.0.len())?;
        }
        Ok(())
    }
}

impl fmt::Debug for Untrusted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_and_truncates() {
        assert_eq!(Untrusted("shop-1").to_string(), "shop-1");
        assert_eq!(
            Untrusted("a\nb\"c\u{1b}[31m").to_string(),
            "a\\nb\\\"c\\u{1b}[31m"
        );
        let long = "x".repeat(65_535);
        let shown = Untrusted(&long).to_string();
        assert_eq!(shown, format!("{}…(65535 bytes)", "x".repeat(64)));
        let exact = "y".repeat(UNTRUSTED_LOG_CHARS);
        assert_eq!(Untrusted(&exact).to_string(), exact);
        assert_eq!(format!("{:?}", Untrusted("a")), "\"a\"");
    }
}
