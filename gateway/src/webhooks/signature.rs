//! The `Telepatch-Signature` header: `t=<unix seconds>,v1=<hex HMAC-SHA256(secret,
//! "<t>.<raw body>")>` (the scheme Stripe's webhooks use). The timestamp is signed with
//! the body, so a receiver that rejects old timestamps also rejects replays.

use hmac::{KeyInit, Mac};

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// The header's value for `body` sent at `unix_seconds`, signed with `secret`.
pub fn signature_header(secret: &[u8], unix_seconds: i64, body: &[u8]) -> String {
    format!(
        "t={unix_seconds},v1={}",
        hex_hmac(secret, unix_seconds, body)
    )
}

/// HMAC-SHA256 of `"<t>.<body>"` in lowercase hex.
fn hex_hmac(secret: &[u8], unix_seconds: i64, body: &[u8]) -> String {
    // HMAC takes keys of any length (longer ones are hashed), so this never fails.
    let Ok(mut mac) = HmacSha256::new_from_slice(secret) else {
        return String::new();
    };
    mac.update(unix_seconds.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let tag = mac.finalize().into_bytes();
    let mut text = String::with_capacity(2 * tag.len());
    for byte in tag.iter() {
        text.push_str(&format!("{byte:02x}"));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The worked example of docs/API.md ("Event webhooks"), which a receiver can check
    /// with Python's `hmac` module.
    #[test]
    fn matches_the_documented_example() {
        let body = br#"{"id":"7d0f5f8e-3c57-4bde-9a53-cf8c1c1b55a2","type":"dtmf"}"#;
        assert_eq!(
            signature_header(b"whsec_example_secret", 1_700_000_000, body),
            "t=1700000000,v1=bbced6722718c0f00438c9dd26e8b013df8799b313aecb98fa850a74ba4182ea"
        );
    }

    /// RFC 4231 test case 2 (key "Jefe"), through the same code path.
    #[test]
    fn is_hmac_sha256() {
        let Ok(mut mac) = HmacSha256::new_from_slice(b"Jefe") else {
            panic!("HMAC takes any key");
        };
        mac.update(b"what do ya want for nothing?");
        let tag: Vec<String> = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            tag.concat(),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
