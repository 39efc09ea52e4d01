//! Text from outside in log lines: producers' Kafka records and clients' keys are logged
//! escaped and cut short, never raw or in full. A newline or terminal escape in a key must not
//! forge a log line or reach an operator's terminal, and a megabyte record must not flood the
//! log. Owns only that formatting; must never be bypassed by logging such text with `%`.

use std::fmt;

/// Bytes shown at most; the rest is counted.
pub const SHOWN: usize = 64;

/// `Display`s the bytes ASCII-escaped (`\n`, `\x1b`, …), cut after [`SHOWN`] bytes.
#[derive(Clone, Copy)]
pub struct Untrusted<'a>(pub &'a [u8]);

impl<'a> Untrusted<'a> {
    pub fn text(s: &'a str) -> Self {
        Self(s.as_bytes())
    }
}

impl fmt::Display for Untrusted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = &self.0[..self.0.len().min(SHOWN)];
        write!(f, "{}", shown.escape_ascii())?;
        match self.0.len() - shown.len() {
            0 => Ok(()),
            more => write!(f, "…(+{more} bytes)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_bytes_are_escaped_and_long_text_is_cut() {
        assert_eq!(Untrusted::text("k-1").to_string(), "k-1");
        let forged = "k\n2026-12-03T00:00:00Z  INFO admin: drained\x1b[2J";
        let shown = Untrusted::text(forged).to_string();
        assert!(!shown.contains('\n') && !shown.contains('\x1b'), "{shown}");
        assert!(shown.starts_with("k\\n2026"), "{shown}");
        let long = vec![b'x'; 1000];
        let shown = Untrusted(&long).to_string();
        assert_eq!(shown, format!("{}…(+936 bytes)", "x".repeat(64)));
        assert_eq!(Untrusted(&[0xff, b'"']).to_string(), "\\xff\\\"");
    }
}
