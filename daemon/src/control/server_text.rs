//! Text a control server puts in an error (an HTTP error body,
//! `RegisterResponse.Error`), made safe to keep in our errors.
//!
//! Those errors become CNI error messages and end up in pod events, so the
//! server's words are cut to a short excerpt and anything key-like in them is
//! removed before they are stored, whatever the server chose to echo.

use std::fmt;

use tailnet_auth::Secret;

/// A short, key-free excerpt of what a control server said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerText(String);

impl ServerText {
    /// An excerpt of `raw` with `sent` (secrets we sent in the request, such
    /// as the auth key) and anything that looks like a key removed.
    pub fn redacted(raw: &[u8], sent: Option<&Secret>) -> Self {
        let known: Vec<&str> = sent.map(Secret::expose).into_iter().collect();
        Self(tailnet_auth::redact_excerpt(raw, &known))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ServerText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_we_sent_and_key_like_words_are_removed() {
        let sent = Secret::new("plainsecret");
        let body = b"unauthorized: key plainsecret (rsk_abcdef0123456789) is invalid or expired";
        let text = ServerText::redacted(body, Some(&sent));
        assert!(!text.as_str().contains("plainsecret"), "{text}");
        assert!(!text.as_str().contains("rsk_abcdef"), "{text}");
        assert!(text.as_str().starts_with("unauthorized: key "), "{text}");
        assert!(text.as_str().ends_with("is invalid or expired"), "{text}");
    }

    #[test]
    fn long_bodies_keep_only_a_short_single_line_prefix() {
        let body = "node limit reached\n".repeat(500);
        let text = ServerText::redacted(body.as_bytes(), None);
        assert!(text.as_str().starts_with("node limit reached"), "{text}");
        assert!(
            text.as_str().chars().count() <= 201,
            "{}",
            text.as_str().len()
        );
        assert!(!text.as_str().contains('\n'), "{text}");
    }
}
