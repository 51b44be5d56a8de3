//! Stateless negotiate: the connection token is `id ‖ expiry ‖ HMAC(key, id ‖ expiry ‖ user)`,
//! so whichever notify process the WebSocket lands on can verify it without shared state or
//! sticky sessions. A token is bound to its user and expires quickly (the client connects
//! right after negotiating, and negotiates again on every reconnect). The expiry's top bit,
//! signed with it, marks a stateful connection, whose token also serves its later resumes.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

const ID_LEN: usize = 16;
const MAC_LEN: usize = 16;

/// The expiry's bit that marks a stateful-reconnect token (an expiry never reaches it).
const STATEFUL: u64 = 1 << 63;

/// A token that verified: its connection id, whether the connection is stateful, and whether
/// the token is past its expiry (a stateful token still identifies its connection for resumes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub id: String,
    pub stateful: bool,
    pub expired: bool,
}

/// Signs and verifies connection tokens with one key shared by every notify process.
#[derive(Clone)]
pub struct TokenSigner {
    key: [u8; 32],
    ttl: Duration,
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default()
}

/// A new random connection id: 16 bytes, base64url (22 characters), as ASP.NET makes them.
pub fn new_connection_id() -> String {
    let bytes: [u8; ID_LEN] = rand::random();
    URL_SAFE_NO_PAD.encode(bytes)
}

impl TokenSigner {
    pub fn new(key: [u8; 32], ttl: Duration) -> Self {
        Self { key, ttl }
    }

    fn mac(&self, id: &[u8], expiry: u64, user_id: &str) -> [u8; MAC_LEN] {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.key).expect("any key length");
        mac.update(id);
        mac.update(&expiry.to_be_bytes());
        mac.update(user_id.as_bytes());
        let full = mac.finalize().into_bytes();
        let mut out = [0u8; MAC_LEN];
        out.copy_from_slice(&full[..MAC_LEN]);
        out
    }

    /// (connection id, connection token) for `user_id`.
    pub fn issue(&self, user_id: &str, stateful: bool) -> (String, String) {
        let id: [u8; ID_LEN] = rand::random();
        let expiry = (now() + self.ttl.as_secs()) | if stateful { STATEFUL } else { 0 };
        let mut token = Vec::with_capacity(ID_LEN + 8 + MAC_LEN);
        token.extend_from_slice(&id);
        token.extend_from_slice(&expiry.to_be_bytes());
        token.extend_from_slice(&self.mac(&id, expiry, user_id));
        (URL_SAFE_NO_PAD.encode(id), URL_SAFE_NO_PAD.encode(token))
    }

    /// The connection id inside a valid, unexpired token of `user_id`.
    pub fn verify(&self, token: &str, user_id: &str) -> Option<String> {
        self.inspect(token, user_id).filter(|v| !v.expired).map(|v| v.id)
    }

    /// What a token of `user_id` says, expired or not; `None` unless this key signed it for that user.
    pub fn inspect(&self, token: &str, user_id: &str) -> Option<Verified> {
        let raw = URL_SAFE_NO_PAD.decode(token).ok()?;
        if raw.len() != ID_LEN + 8 + MAC_LEN {
            return None;
        }
        let (id, rest) = raw.split_at(ID_LEN);
        let (expiry, mac) = rest.split_at(8);
        let expiry = u64::from_be_bytes(expiry.try_into().ok()?);
        let expected = self.mac(id, expiry, user_id);
        // Constant-time comparison: the MAC must not leak through timing.
        let same = expected.iter().zip(mac).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0;
        same.then(|| Verified { id: URL_SAFE_NO_PAD.encode(id), stateful: expiry & STATEFUL != 0, expired: expiry & !STATEFUL < now() })
    }
}

/// The version a negotiate request's `negotiateVersion` asks for (0 when absent, at most the 1
/// this server speaks), or the error text ASP.NET answers with (in a 200, as ASP.NET does).
pub fn requested_version(value: Option<&str>) -> Result<u32, String> {
    match value {
        None => Ok(0),
        Some(v) => match v.parse::<i64>() {
            Ok(n) if n < 0 => Err(format!("The client requested version '{n}', but the server does not support this version.")),
            Ok(n) => Ok(n.min(1) as u32),
            Err(_) => Err("The client requested a non-integer protocol version.".into()),
        },
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn the_requested_version_is_read_as_asp_net_reads_it() {
        assert_eq!(requested_version(None), Ok(0));
        assert_eq!(requested_version(Some("1")), Ok(1));
        assert_eq!(requested_version(Some("7")), Ok(1), "a newer client gets the version this server speaks");
        assert!(requested_version(Some("-1")).unwrap_err().contains("'-1'"));
        assert!(requested_version(Some("abc")).unwrap_err().contains("non-integer"));
    }

    proptest! {
        #[test]
        fn any_value_gives_a_version_or_an_error_and_never_panics(value in ".{0,200}") {
            if let Ok(v) = requested_version(Some(&value)) {
                prop_assert!(v <= 1);
            }
        }

        #[test]
        fn no_token_verifies_unless_it_was_issued(token in ".{0,80}", user in "[a-z]{1,8}") {
            let signer = TokenSigner::new([3; 32], Duration::from_secs(60));
            prop_assert_eq!(signer.verify(&token, &user), None);
        }
    }

    #[test]
    fn a_token_verifies_for_its_user_only_and_not_after_expiry() {
        let signer = TokenSigner::new([7; 32], Duration::from_secs(60));
        let (id, token) = signer.issue("alice", false);
        assert_eq!(id.len(), 22);
        assert_eq!(signer.verify(&token, "alice"), Some(id));
        assert_eq!(signer.verify(&token, "bob"), None);
        let other = TokenSigner::new([8; 32], Duration::from_secs(60));
        assert_eq!(other.verify(&token, "alice"), None, "another key");
        let expired = TokenSigner::new([7; 32], Duration::ZERO);
        let (_, old) = expired.issue("alice", false);
        let mut raw = URL_SAFE_NO_PAD.decode(&old).unwrap();
        raw[ID_LEN..ID_LEN + 8].copy_from_slice(&(now() - 10).to_be_bytes());
        assert_eq!(signer.verify(&URL_SAFE_NO_PAD.encode(raw), "alice"), None, "tampered expiry");
        assert_eq!(signer.verify("not-a-token", "alice"), None);
        assert!(token.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'), "URL-safe");
    }

    #[test]
    fn the_stateful_bit_is_signed_and_an_expired_stateful_token_still_names_its_connection() {
        let signer = TokenSigner::new([7; 32], Duration::from_secs(60));
        let (id, token) = signer.issue("alice", true);
        assert_eq!(signer.inspect(&token, "alice"), Some(Verified { id: id.clone(), stateful: true, expired: false }));
        assert_eq!(signer.inspect(&token, "bob"), None, "another user");
        let mut raw = URL_SAFE_NO_PAD.decode(&token).unwrap();
        raw[ID_LEN] ^= 0x80;
        assert_eq!(signer.inspect(&URL_SAFE_NO_PAD.encode(&raw), "alice"), None, "the bit cannot be flipped");
        let (_, stateless) = signer.issue("alice", false);
        assert!(!signer.inspect(&stateless, "alice").unwrap().stateful);
        let old = TokenSigner::new([7; 32], Duration::ZERO);
        let (id, token) = old.issue("alice", true);
        std::thread::sleep(Duration::from_millis(1100));
        assert_eq!(signer.verify(&token, "alice"), None, "expired for a new connection");
        assert_eq!(signer.inspect(&token, "alice"), Some(Verified { id, stateful: true, expired: true }));
    }
}
