//! The signing keys an identity provider publishes as a JWKS (`--jwt-jwks-url`): fetched over
//! HTTP(S), cached, picked by the token's `kid`, refreshed in the background on an interval and
//! at once (at most every `MIN_REFETCH`) when a token names a key the cache does not hold, so a
//! key rotation needs no restart and a removed key stops being accepted.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use jsonwebtoken::{
    Algorithm, DecodingKey,
    jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm, PublicKeyUse},
};

/// The shortest time between two fetches a token can cause: a stream of tokens with made-up
/// `kid`s costs the identity provider at most one request per this interval.
const MIN_REFETCH: Duration = Duration::from_secs(5);
/// A key set larger than this is refused: nothing the provider sends grows memory without bound.
const MAX_BODY: usize = 1 << 20;
const MAX_KEYS: usize = 100;
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("no signing key {0} for algorithm {1:?} in the key set")]
    UnknownKey(String, Algorithm),
    #[error("the key set at --jwt-jwks-url cannot be fetched: {0}")]
    Unavailable(String),
}

/// The keys of one JWKS URL and when they were fetched.
pub struct Jwks {
    url: reqwest::Url,
    refresh: Duration,
    client: reqwest::Client,
    keys: RwLock<Arc<KeySet>>,
    /// Single flight: one fetch at a time, and the time of the last attempt for `MIN_REFETCH`.
    fetching: tokio::sync::Mutex<Option<Instant>>,
}

#[derive(Default)]
struct KeySet {
    by_kid: HashMap<String, (DecodingKey, Algorithm)>,
    /// Keys without a `kid`: usable only by a token without one, and only when unambiguous.
    anonymous: Vec<(DecodingKey, Algorithm)>,
    fetched_at: Option<Instant>,
}

impl Jwks {
    pub fn new(url: &str, refresh: Duration) -> anyhow::Result<Arc<Self>> {
        let url = reqwest::Url::parse(url).map_err(|e| anyhow::anyhow!("--jwt-jwks-url {url:?} is not a URL: {e}"))?;
        anyhow::ensure!(matches!(url.scheme(), "http" | "https"), "--jwt-jwks-url must be an http or https URL");
        let client = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .redirect(reqwest::redirect::Policy::limited(3))
            .build()
            .map_err(|e| anyhow::anyhow!("cannot build the JWKS client: {e}"))?;
        Ok(Arc::new(Self { url, refresh, client, keys: RwLock::new(Arc::default()), fetching: tokio::sync::Mutex::new(None) }))
    }

    /// The key for a token's `kid` and `alg`: from the cache, else after one fetch.
    pub async fn key(self: &Arc<Self>, kid: Option<&str>, alg: Algorithm) -> Result<DecodingKey, JwksError> {
        let cached = self.snapshot();
        if cached.fetched_at.is_some_and(|at| at.elapsed() >= self.refresh) {
            // Stale keys keep serving while the refresh runs: the provider being slow or down
            // must not stop tokens signed with a key it published before.
            let this = Arc::clone(self);
            tokio::spawn(async move { this.refetch(false).await });
        }
        if let Some(key) = cached.find(kid, alg) {
            return Ok(key);
        }
        // A failed fetch is logged inside; stale keys are still keys.
        let _ = self.refetch(true).await;
        let fresh = self.snapshot();
        if fresh.fetched_at.is_none() {
            return Err(JwksError::Unavailable("not fetched yet".into()));
        }
        fresh.find(kid, alg).ok_or_else(|| JwksError::UnknownKey(kid.unwrap_or("(no kid)").into(), alg))
    }

    /// Fetches the key set now (at start, so the first request does not wait for it).
    pub async fn warm(self: &Arc<Self>) -> Result<(), JwksError> {
        self.refetch(false).await
    }

    fn snapshot(&self) -> Arc<KeySet> {
        Arc::clone(&self.keys.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Fetches unless another fetch just ran; `rate_limited` applies `MIN_REFETCH`.
    async fn refetch(&self, rate_limited: bool) -> Result<(), JwksError> {
        let mut last = self.fetching.lock().await;
        if let Some(at) = *last {
            let recent = if rate_limited { MIN_REFETCH } else { Duration::from_secs(1) };
            if at.elapsed() < recent {
                return Ok(());
            }
        }
        *last = Some(Instant::now());
        match self.fetch().await {
            Ok(set) => {
                tracing::info!(keys = set.len(), "fetched the JWKS");
                *self.keys.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(set);
                Ok(())
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot fetch the JWKS; keys fetched before, if any, stay in use");
                Err(e)
            }
        }
    }

    async fn fetch(&self) -> Result<KeySet, JwksError> {
        let unavailable = |e: &dyn std::fmt::Display| JwksError::Unavailable(e.to_string());
        let mut response = self.client.get(self.url.clone()).send().await.map_err(|e| unavailable(&e))?;
        if !response.status().is_success() {
            return Err(JwksError::Unavailable(format!("status {}", response.status())));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| unavailable(&e))? {
            if body.len() + chunk.len() > MAX_BODY {
                return Err(JwksError::Unavailable(format!("the key set is larger than {MAX_BODY} bytes")));
            }
            body.extend_from_slice(&chunk);
        }
        let set: JwkSet = serde_json::from_slice(&body).map_err(|e| unavailable(&format!("not a JWKS: {e}")))?;
        Ok(KeySet::from_jwks(&set.keys))
    }
}

impl KeySet {
    fn from_jwks(jwks: &[Jwk]) -> Self {
        let mut set = KeySet { fetched_at: Some(Instant::now()), ..Default::default() };
        for jwk in jwks.iter().take(MAX_KEYS) {
            let Some((key, alg)) = usable(jwk) else {
                tracing::debug!(kid = ?jwk.common.key_id, "skipping a JWKS key that cannot verify signatures here");
                continue;
            };
            match &jwk.common.key_id {
                Some(kid) => {
                    set.by_kid.insert(kid.clone(), (key, alg));
                }
                None => set.anonymous.push((key, alg)),
            }
        }
        set
    }

    fn len(&self) -> usize {
        self.by_kid.len() + self.anonymous.len()
    }

    fn find(&self, kid: Option<&str>, alg: Algorithm) -> Option<DecodingKey> {
        match kid {
            Some(kid) => self.by_kid.get(kid).filter(|(_, a)| *a == alg).map(|(k, _)| k.clone()),
            None => {
                let mut matching = self.anonymous.iter().chain(self.by_kid.values()).filter(|(_, a)| *a == alg);
                match (matching.next(), matching.next()) {
                    (Some((key, _)), None) => Some(key.clone()),
                    _ => None,
                }
            }
        }
    }
}

/// A public signing key and the one algorithm it verifies. Symmetric (`oct`) keys are never
/// taken from a key set: an HMAC key published next to public keys would let anyone sign.
fn usable(jwk: &Jwk) -> Option<(DecodingKey, Algorithm)> {
    if jwk.common.public_key_use.as_ref().is_some_and(|u| *u != PublicKeyUse::Signature) {
        return None;
    }
    let declared = jwk.common.key_algorithm;
    let alg = match (&jwk.algorithm, declared) {
        (AlgorithmParameters::RSA(_), None) => Algorithm::RS256,
        (
            AlgorithmParameters::RSA(_),
            Some(
                a @ (KeyAlgorithm::RS256
                | KeyAlgorithm::RS384
                | KeyAlgorithm::RS512
                | KeyAlgorithm::PS256
                | KeyAlgorithm::PS384
                | KeyAlgorithm::PS512),
            ),
        ) => Algorithm::try_from(a).ok()?,
        (AlgorithmParameters::EllipticCurve(p), None | Some(KeyAlgorithm::ES256)) if p.curve == EllipticCurve::P256 => Algorithm::ES256,
        (AlgorithmParameters::EllipticCurve(p), None | Some(KeyAlgorithm::ES384)) if p.curve == EllipticCurve::P384 => Algorithm::ES384,
        (AlgorithmParameters::OctetKeyPair(p), None | Some(KeyAlgorithm::EdDSA)) if p.curve == EllipticCurve::Ed25519 => Algorithm::EdDSA,
        _ => return None,
    };
    DecodingKey::from_jwk(jwk).ok().map(|key| (key, alg))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwk(value: serde_json::Value) -> Jwk {
        serde_json::from_value(value).unwrap()
    }

    // Selection needs no real modulus: any base64url n and e decode to a key.
    fn rsa(kid: Option<&str>, alg: Option<&str>) -> serde_json::Value {
        let mut v =
            serde_json::json!({ "kty": "RSA", "n": "sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbg", "e": "AQAB" });
        if let Some(kid) = kid {
            v["kid"] = kid.into();
        }
        if let Some(alg) = alg {
            v["alg"] = alg.into();
        }
        v
    }

    #[test]
    fn keys_are_picked_by_kid_and_algorithm() {
        let set = KeySet::from_jwks(&[jwk(rsa(Some("a"), None)), jwk(rsa(Some("b"), Some("PS256")))]);
        assert!(set.find(Some("a"), Algorithm::RS256).is_some());
        assert!(set.find(Some("a"), Algorithm::PS256).is_none(), "a key verifies one algorithm only");
        assert!(set.find(Some("b"), Algorithm::PS256).is_some());
        assert!(set.find(Some("c"), Algorithm::RS256).is_none());
        assert!(set.find(None, Algorithm::RS256).is_some(), "one RS256 key: a token without kid may use it");
    }

    #[test]
    fn a_token_without_kid_is_refused_when_the_key_is_ambiguous() {
        let set = KeySet::from_jwks(&[jwk(rsa(Some("a"), None)), jwk(rsa(None, None))]);
        assert!(set.find(None, Algorithm::RS256).is_none());
    }

    #[test]
    fn symmetric_encryption_and_unknown_keys_are_never_used() {
        let set = KeySet::from_jwks(&[
            jwk(serde_json::json!({ "kty": "oct", "kid": "h", "k": "c2VjcmV0", "alg": "HS256" })),
            jwk({
                let mut v = rsa(Some("enc"), None);
                v["use"] = "enc".into();
                v
            }),
            jwk(rsa(Some("oaep"), Some("RSA-OAEP"))),
        ]);
        assert_eq!(set.len(), 0);
    }

    #[test]
    fn a_huge_key_set_is_cut_at_the_bound() {
        let keys: Vec<Jwk> = (0..MAX_KEYS + 20).map(|i| jwk(rsa(Some(&i.to_string()), None))).collect();
        assert_eq!(KeySet::from_jwks(&keys).len(), MAX_KEYS);
    }

    #[test]
    fn only_http_urls_are_taken() {
        assert!(Jwks::new("file:///etc/passwd", Duration::from_secs(60)).is_err());
        assert!(Jwks::new("not a url", Duration::from_secs(60)).is_err());
        assert!(Jwks::new("https://idp.example/.well-known/jwks.json", Duration::from_secs(60)).is_ok());
    }
}
