//! `[webhooks]`: where call events are POSTed, how they are signed, retried and
//! bounded. Parsed and checked once, with the rest of the configuration.

use std::fmt;
use std::time::Duration;

use api::webhook::WebhookEventType;
use serde::{Deserialize, Serialize};

use super::queue::RetryPolicy;

/// The endpoint events are POSTed to: an absolute `http://` URL, parsed once.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct WebhookUrl(reqwest::Url);

impl WebhookUrl {
    /// The parsed URL.
    pub fn url(&self) -> &reqwest::Url {
        &self.0
    }
}

/// An `events_url` that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WebhookUrlError {
    /// Not a URL.
    #[error("{text:?} is not a URL: {reason}")]
    Malformed {
        /// What was given.
        text: String,
        /// The parser's words.
        reason: String,
    },
    /// A scheme the HTTP client cannot send to.
    #[error(
        "{text:?}: the scheme must be http (this build's HTTP client has no TLS; reach an \
         https endpoint through a TLS-terminating proxy on a trusted network)"
    )]
    Scheme {
        /// What was given.
        text: String,
    },
}

impl TryFrom<String> for WebhookUrl {
    type Error = WebhookUrlError;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        let url = reqwest::Url::parse(&text).map_err(|e| WebhookUrlError::Malformed {
            text: text.clone(),
            reason: e.to_string(),
        })?;
        if url.scheme() != "http" || !url.has_host() {
            return Err(WebhookUrlError::Scheme { text });
        }
        Ok(WebhookUrl(url))
    }
}

impl From<WebhookUrl> for String {
    fn from(url: WebhookUrl) -> String {
        url.0.into()
    }
}

/// The HMAC key: kept out of logs, `Debug` and the printed configuration.
#[derive(Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(from = "String", into = "String")]
pub struct WebhookSecret(String);

impl WebhookSecret {
    /// The key's bytes.
    pub fn expose(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl From<String> for WebhookSecret {
    fn from(text: String) -> WebhookSecret {
        WebhookSecret(text)
    }
}

impl From<WebhookSecret> for String {
    // `check-config` prints the effective settings: never the key.
    fn from(_: WebhookSecret) -> String {
        "<redacted>".into()
    }
}

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookSecret(<redacted>)")
    }
}

/// Shortest `secret` accepted, in bytes.
pub const MIN_SECRET_LEN: usize = 16;

/// `[webhooks]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhooksConfig {
    /// Where events are POSTed; unset: no webhooks.
    pub events_url: Option<WebhookUrl>,
    /// The HMAC-SHA256 key of `Telepatch-Signature` (required with `events_url`, at
    /// least 16 bytes).
    pub secret: Option<WebhookSecret>,
    /// Which event types are sent (default: every call event).
    pub events: Vec<WebhookEventType>,
    /// How long one attempt may take, connection to response head, in ms (2000).
    pub timeout_ms: u64,
    /// Attempts of one event before it is given up (12).
    pub max_attempts: u32,
    /// Wait after the first failed attempt, in ms (250); doubled after each failure.
    pub backoff_initial_ms: u64,
    /// Longest wait between attempts, in ms (30000).
    pub backoff_max_ms: u64,
    /// Events held while the endpoint is slow or down (10000); beyond it the oldest are
    /// dropped.
    pub queue_limit: usize,
    /// Events not delivered within this many seconds of happening are given up (3600).
    pub max_age_s: u64,
    /// Requests in flight at once, each for a different call (8).
    pub concurrency: usize,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        WebhooksConfig {
            events_url: None,
            secret: None,
            events: WebhookEventType::ALL.to_vec(),
            timeout_ms: 2_000,
            max_attempts: 12,
            backoff_initial_ms: 250,
            backoff_max_ms: 30_000,
            queue_limit: 10_000,
            max_age_s: 3_600,
            concurrency: 8,
        }
    }
}

impl WebhooksConfig {
    /// The retry policy of the delivery queue.
    pub fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            max_attempts: self.max_attempts,
            initial_backoff: Duration::from_millis(self.backoff_initial_ms),
            max_backoff: Duration::from_millis(self.backoff_max_ms),
            max_age: Duration::from_secs(self.max_age_s),
            queue_limit: self.queue_limit,
        }
    }

    /// Every problem with the section, as `(field, message)`.
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        let mut problem = |field: &str, message: String| {
            problems.push((format!("webhooks.{field}"), message));
        };
        match (&self.events_url, &self.secret) {
            (Some(_), None) => problem(
                "secret",
                "is required with events_url (receivers verify the signature with it)".into(),
            ),
            (_, Some(secret)) if secret.expose().len() < MIN_SECRET_LEN => problem(
                "secret",
                format!("is too short: at least {MIN_SECRET_LEN} bytes"),
            ),
            _ => {}
        }
        if self.events.is_empty() {
            problem(
                "events",
                "is empty: list the event types to send, or remove events_url".into(),
            );
        }
        let ranges: [(&str, u64, u64, u64); 7] = [
            ("timeout_ms", self.timeout_ms, 100, 60_000),
            ("max_attempts", u64::from(self.max_attempts), 1, 1_000),
            ("backoff_initial_ms", self.backoff_initial_ms, 10, 60_000),
            ("backoff_max_ms", self.backoff_max_ms, 10, 3_600_000),
            (
                "queue_limit",
                u64::try_from(self.queue_limit).unwrap_or(u64::MAX),
                1,
                1_000_000,
            ),
            ("max_age_s", self.max_age_s, 1, 604_800),
            (
                "concurrency",
                u64::try_from(self.concurrency).unwrap_or(u64::MAX),
                1,
                256,
            ),
        ];
        for (field, value, low, high) in ranges {
            if !(low..=high).contains(&value) {
                problem(field, format!("{value} is out of range ({low}..={high})"));
            }
        }
        if self.backoff_max_ms < self.backoff_initial_ms {
            problem(
                "backoff_max_ms",
                format!(
                    "{} is below backoff_initial_ms ({})",
                    self.backoff_max_ms, self.backoff_initial_ms
                ),
            );
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, ConfigError};

    fn fields(text: &str) -> Vec<String> {
        match Config::from_toml(text).map(|c| c.validate()) {
            Ok(Ok(())) => Vec::new(),
            Ok(Err(ConfigError::Invalid { problems })) => {
                problems.into_iter().map(|p| p.field).collect()
            }
            Ok(Err(e)) => panic!("{e}"),
            Err(e) => vec![e],
        }
    }

    #[test]
    fn off_by_default_and_every_key_is_read() {
        let config = Config::default();
        assert!(config.webhooks.events_url.is_none());
        assert_eq!(config.webhooks.events, WebhookEventType::ALL);
        let config = Config::from_toml(
            "[webhooks]\nevents_url = \"http://127.0.0.1:9/hooks\"\nsecret = \"0123456789abcdef\"\n\
             events = [\"call_started\", \"call_ended\"]\ntimeout_ms = 500\nmax_attempts = 3\n\
             backoff_initial_ms = 100\nbackoff_max_ms = 1000\nqueue_limit = 50\nmax_age_s = 60\n\
             concurrency = 2\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        config.validate().unwrap_or_else(|e| panic!("{e}"));
        let hooks = &config.webhooks;
        assert_eq!(
            hooks.events_url.as_ref().map(|u| u.url().as_str()),
            Some("http://127.0.0.1:9/hooks")
        );
        assert_eq!(
            hooks.events,
            [WebhookEventType::CallStarted, WebhookEventType::CallEnded]
        );
        let policy = hooks.retry_policy();
        assert_eq!(policy.max_attempts, 3);
        assert_eq!(policy.initial_backoff, Duration::from_millis(100));
        assert_eq!(policy.queue_limit, 50);
        assert_eq!(hooks.concurrency, 2);
    }

    #[test]
    fn the_secret_is_required_and_never_shown() {
        assert_eq!(
            fields("[webhooks]\nevents_url = \"http://127.0.0.1:9/\"\n"),
            ["webhooks.secret"]
        );
        assert_eq!(
            fields("[webhooks]\nevents_url = \"http://127.0.0.1:9/\"\nsecret = \"short\"\n"),
            ["webhooks.secret"]
        );
        let config = Config::from_toml(
            "[webhooks]\nevents_url = \"http://127.0.0.1:9/\"\nsecret = \"s3cret-s3cret-s3cret\"\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let shown = format!(
            "{:?}\n{}",
            config,
            toml::to_string(&config).unwrap_or_default()
        );
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
    }

    #[test]
    fn bad_values_are_reported_with_their_field() {
        for bad in ["ftp://x/", "https://example.com/", "not a url"] {
            let err = Config::from_toml(&format!("[webhooks]\nevents_url = {bad:?}\n"))
                .err()
                .unwrap_or_default();
            assert!(
                err.contains("events_url") || err.contains(bad),
                "{bad}: {err}"
            );
        }
        assert!(Config::from_toml("[webhooks]\nevents = [\"levels\"]\n").is_err());
        assert_eq!(
            fields(
                "[webhooks]\nevents = []\ntimeout_ms = 0\nqueue_limit = 0\n\
                 backoff_initial_ms = 5000\nbackoff_max_ms = 1000\n"
            ),
            [
                "webhooks.events",
                "webhooks.timeout_ms",
                "webhooks.queue_limit",
                "webhooks.backoff_max_ms"
            ]
        );
    }
}
