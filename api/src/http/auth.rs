//! Bearer-token authentication for every `/v1` route.
//!
//! A request without a usable `Authorization: Bearer <token>` header gets 401; a valid
//! token whose scope does not cover the request gets 403. Reads (GET, HEAD) need the
//! `read` scope, everything else `admin`.
//!
//! Verified tokens are cached for a minute, so the database is not queried on every
//! request and live-call endpoints keep working through a short database outage for
//! clients that were seen recently (up to [`OUTAGE_GRACE`]). The price: revoking a token
//! takes effect within a minute, not instantly.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::Response;
use sha2::{Digest, Sha256};

use super::AppState;
use super::error::ApiError;
use crate::store::{Scope, TokenInfo};

/// How long a verified token is trusted without asking the database again: a token
/// revoked elsewhere (the CLI, another gateway on the same database) stops working
/// within this.
pub const CACHE_FRESH: Duration = Duration::from_secs(5);
/// How long a cached token is still accepted while the database is unavailable.
pub const OUTAGE_GRACE: Duration = Duration::from_secs(15 * 60);
/// Most cached tokens (oldest dropped first).
const CACHE_MAX: usize = 1024;

/// Cache of verified tokens, keyed by the token's SHA-256 (never the token itself).
#[derive(Default)]
pub struct TokenCache {
    entries: Mutex<HashMap<[u8; 32], (TokenInfo, Instant)>>,
}

impl TokenCache {
    fn get(&self, key: &[u8; 32], max_age: Duration) -> Option<TokenInfo> {
        let entries = self
            .entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        entries
            .get(key)
            .filter(|(_, at)| at.elapsed() <= max_age)
            .map(|(info, _)| info.clone())
    }

    fn put(&self, key: [u8; 32], info: TokenInfo) {
        let mut entries = self
            .entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if entries.len() >= CACHE_MAX {
            entries.retain(|_, (_, at)| at.elapsed() <= CACHE_FRESH);
        }
        entries.insert(key, (info, Instant::now()));
    }

    fn forget(&self, key: &[u8; 32]) {
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(key);
    }

    /// Drops every cached token (after a revocation through the API).
    pub fn clear(&self) {
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clear();
    }
}

/// Unknown tokens one address may present within [`FAILURE_WINDOW`] by default; beyond
/// them its requests with tokens not verified recently are refused (429) without
/// checking anything until the window ends.
pub const DEFAULT_MAX_FAILURES: u32 = 20;
/// The window failed token checks are counted in.
pub const FAILURE_WINDOW: Duration = Duration::from_secs(10);
/// Most addresses tracked at once (a flood of addresses cannot grow memory).
const MAX_TRACKED_SOURCES: usize = 4096;

/// Failed token checks per source address: brute force gets `max_failures` guesses
/// (20 by default) per 10 s.
pub struct FailedAttempts {
    /// Unknown tokens allowed per address and window; 0 turns the limit off.
    max_failures: u32,
    sources: Mutex<HashMap<std::net::IpAddr, (u32, Instant)>>,
}

impl Default for FailedAttempts {
    fn default() -> Self {
        FailedAttempts::new(DEFAULT_MAX_FAILURES)
    }
}

impl FailedAttempts {
    /// A limit of `max_failures` unknown tokens per address and [`FAILURE_WINDOW`]
    /// (0: no limit).
    pub fn new(max_failures: u32) -> FailedAttempts {
        FailedAttempts {
            max_failures,
            sources: Mutex::new(HashMap::new()),
        }
    }

    /// Unknown tokens allowed per address and window (0: no limit).
    pub fn max_failures(&self) -> u32 {
        self.max_failures
    }

    /// Whether `source` may try a token now.
    fn allowed(&self, source: std::net::IpAddr) -> bool {
        if self.max_failures == 0 {
            return true;
        }
        let sources = self
            .sources
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match sources.get(&source) {
            Some((failures, since)) => {
                *failures < self.max_failures || since.elapsed() > FAILURE_WINDOW
            }
            None => true,
        }
    }

    /// Counts a failed check; returns true when this one used up the allowance (the
    /// moment worth one log line).
    fn failed(&self, source: std::net::IpAddr) -> bool {
        if self.max_failures == 0 {
            return false;
        }
        let mut sources = self
            .sources
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if sources.len() >= MAX_TRACKED_SOURCES && !sources.contains_key(&source) {
            sources.retain(|_, (_, since)| since.elapsed() <= FAILURE_WINDOW);
            if sources.len() >= MAX_TRACKED_SOURCES {
                return false;
            }
        }
        let entry = sources.entry(source).or_insert((0, Instant::now()));
        if entry.1.elapsed() > FAILURE_WINDOW {
            *entry = (0, Instant::now());
        }
        entry.0 += 1;
        entry.0 == self.max_failures
    }
}

/// The scope a request needs.
pub fn required_scope(method: &Method) -> Scope {
    if method == Method::GET || method == Method::HEAD {
        Scope::Read
    } else {
        Scope::Admin
    }
}

/// Middleware: authenticates and authorizes, then runs the handler with the caller's
/// [`TokenInfo`] in the request extensions.
pub async fn require_token(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let source = request
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|info| info.0.ip());
    let failed = |message: &str| {
        if let Some(source) = source
            && state.failed_attempts.failed(source)
        {
            tracing::warn!(%source, failures = state.failed_attempts.max_failures(), window_s = FAILURE_WINDOW.as_secs(),
                "failed API token checks from this address; refusing it for a while");
        }
        ApiError::unauthorized(message)
    };
    let token = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ApiError::unauthorized("send an API token: Authorization: Bearer <token>"))?
        .to_owned();
    let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
    // An address that keeps presenting unknown tokens gets no more answers about new
    // ones for a while; tokens this gateway verified recently keep working from it (an
    // operator behind the same address is not locked out by a guesser).
    if let Some(source) = source
        && state.tokens.get(&key, OUTAGE_GRACE).is_none()
        && !state.failed_attempts.allowed(source)
    {
        return Err(ApiError::too_many_attempts(format!(
            "too many unknown tokens from {source}; try again in {} s",
            FAILURE_WINDOW.as_secs()
        )));
    }

    let info = match state.tokens.get(&key, CACHE_FRESH) {
        Some(info) => info,
        None => match state.store.verify_token(&token).await {
            Ok(Some(info)) => {
                state.tokens.put(key, info.clone());
                info
            }
            Ok(None) => {
                state.tokens.forget(&key);
                return Err(failed("unknown or revoked API token"));
            }
            Err(e) if e.is_unavailable() => {
                state.tokens.get(&key, OUTAGE_GRACE).ok_or_else(|| {
                    ApiError::unavailable(
                        "the database is unavailable and this token was not seen recently",
                    )
                })?
            }
            Err(e) => return Err(e.into()),
        },
    };
    let needed = required_scope(request.method());
    if !info.scope.allows(needed) {
        return Err(ApiError::forbidden(format!(
            "token {:?} has the {:?} scope; this request needs {:?}",
            info.name, info.scope, needed
        )));
    }
    request.extensions_mut().insert(info);
    request.extensions_mut().insert(PresentedToken(token));
    Ok(next.run(request).await)
}

/// The token a request was authenticated with, for handlers that outlive the request
/// (an event stream re-checks it while it runs).
#[derive(Clone)]
pub struct PresentedToken(pub String);

/// Whether `token` is still valid; `true` while the database cannot say (the stream
/// was authenticated when it started, and an outage must not cut every stream).
pub async fn still_valid(state: &AppState, token: &str) -> bool {
    !matches!(state.store.verify_token(token).await, Ok(None))
}

#[cfg(test)]
mod tests {
    use super::FailedAttempts;
    use std::net::{IpAddr, Ipv4Addr};

    const GUESSER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 9));
    const OPERATOR: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 10));

    #[test]
    fn an_address_is_refused_after_its_allowance_and_others_are_not() {
        let attempts = FailedAttempts::new(3);
        assert!(!attempts.failed(GUESSER));
        assert!(!attempts.failed(GUESSER));
        assert!(attempts.allowed(GUESSER));
        assert!(
            attempts.failed(GUESSER),
            "the third failure uses up the allowance"
        );
        assert!(!attempts.allowed(GUESSER));
        assert!(attempts.allowed(OPERATOR));
    }

    #[test]
    fn a_limit_of_zero_never_refuses() {
        let attempts = FailedAttempts::new(0);
        for _ in 0..1000 {
            assert!(!attempts.failed(GUESSER));
        }
        assert!(attempts.allowed(GUESSER));
    }
}
