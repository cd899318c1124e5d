//! API token generation and hashing.
//!
//! A token is `tp_` followed by the URL-safe base64 (no padding, 43 characters) of 32
//! bytes from the operating system's RNG. The store keeps only the SHA-256 of the whole
//! token, in lowercase hex. A fast unsalted hash is enough here, unlike for passwords:
//! the token has 256 bits of entropy, so there is no dictionary to try and a leaked
//! table of hashes cannot be reversed by brute force. Salted slow hashes (argon2)
//! exist to protect low-entropy secrets and would only cost latency on every request.
//!
//! Verification looks the hash up through a unique index instead of comparing secrets,
//! so no constant-time comparison is needed: what an attacker could learn from timing
//! is at most how far the index search got for the hash of the token *they* sent, and
//! knowing bytes of a SHA-256 output does not help find an input that produces it.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

use super::StoreError;

/// Every token starts with this, so it is recognisable in configuration files and by
/// secret scanners.
pub(crate) const PREFIX: &str = "tp_";
/// Random bytes per token.
const RANDOM_BYTES: usize = 32;
/// Length of the base64 part: ceil(32 * 4 / 3) without padding.
const ENCODED_LEN: usize = 43;

/// A fresh token from the OS RNG.
pub(crate) fn generate() -> Result<String, StoreError> {
    let mut bytes = [0u8; RANDOM_BYTES];
    getrandom::fill(&mut bytes).map_err(|error| StoreError::Random {
        reason: error.to_string(),
    })?;
    let mut token = String::with_capacity(PREFIX.len() + ENCODED_LEN);
    token.push_str(PREFIX);
    URL_SAFE_NO_PAD.encode_string(bytes, &mut token);
    Ok(token)
}

/// Whether `text` has the shape of a token. Anything else is rejected before it costs
/// a hash and a query.
pub(crate) fn is_well_formed(text: &str) -> bool {
    text.len() == PREFIX.len() + ENCODED_LEN
        && text.starts_with(PREFIX)
        && text[PREFIX.len()..]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// `last_used_at` is written at most this often per token, so that verifying a token
/// costs one indexed read, not a write per request.
pub(crate) const TOUCH_INTERVAL: chrono::TimeDelta = chrono::TimeDelta::seconds(60);

/// Whether a token last recorded as used at `last_used_at` should be recorded again.
pub(crate) fn needs_touch(
    last_used_at: Option<chrono::DateTime<chrono::Utc>>,
    now: chrono::DateTime<chrono::Utc>,
) -> bool {
    last_used_at.is_none_or(|last| now - last >= TOUCH_INTERVAL)
}

/// The stored form of a token: SHA-256, lowercase hex.
pub(crate) fn hash(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    let mut hex = String::with_capacity(64);
    for byte in digest {
        hex.push(char::from(b"0123456789abcdef"[usize::from(byte >> 4)]));
        hex.push(char::from(b"0123456789abcdef"[usize::from(byte & 0xf)]));
    }
    hex
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_have_the_documented_shape_and_differ() {
        let a = generate().unwrap();
        let b = generate().unwrap();
        assert_eq!(a.len(), 46);
        assert!(is_well_formed(&a) && is_well_formed(&b));
        assert_ne!(a, b);
        assert_eq!(URL_SAFE_NO_PAD.decode(&a[3..]).unwrap().len(), 32);
    }

    #[test]
    fn malformed_tokens_are_recognised() {
        let good = generate().unwrap();
        assert!(!is_well_formed(&good[1..]));
        assert!(!is_well_formed(&format!("xx_{}", &good[3..])));
        assert!(!is_well_formed(&format!("{}=", &good[..45])));
        assert!(!is_well_formed(""));
    }

    #[test]
    fn hash_is_sha256_hex() {
        // FIPS 180-2 test vector: SHA-256("abc").
        assert_eq!(
            hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
