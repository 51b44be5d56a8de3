//! JWT authentication shared by the HTTP API and the hub: HS256 with a shared secret, RS256/ES256
//! with a public key file, and/or the keys of a JWKS URL picked by `kid`. The token header's `alg`
//! picks the key, and an `alg` with no key of its family is refused, so `alg: none` and algorithm
//! confusion cannot pass.

use std::{sync::Arc, time::Duration};

use actix_web::{FromRequest, HttpRequest, dev::Payload, web};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, decode, decode_header, encode};
use serde::{Deserialize, Serialize};

use super::jwks::{Jwks, JwksError};
use crate::{domain::UserId, http::ApiError, secret::Secret};

/// How a JWT is validated. At least one key is present when a role needs authentication.
#[derive(Debug, Clone)]
pub struct JwtSettings {
    pub secret: Option<Secret>,
    pub public_key: Option<std::path::PathBuf>,
    /// The identity provider's key set, and how often it is fetched again.
    pub jwks_url: Option<String>,
    pub jwks_refresh: Duration,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    pub leeway: Duration,
}

/// The authenticated caller of a request or hub connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub user_id: UserId,
    /// When the token stops being accepted, `exp` plus the leeway (seconds since the epoch): a
    /// hub connection ends there. Not at `exp` itself: a client whose token is inside the leeway
    /// would be let in and closed at once, over and over.
    pub expires_at: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("missing bearer token")]
    Missing,
    #[error("invalid token: {0}")]
    Invalid(String),
    /// The token may be good, but the keys to check it cannot be fetched: a 503, not a 401,
    /// so a client retries instead of signing its user out.
    #[error("{0}")]
    KeysUnavailable(String),
}

impl AuthError {
    /// What a 401 says: the kind of problem, never the validating library's words (they tell
    /// an attacker which check failed). The specifics are logged at debug.
    pub fn public_detail(&self) -> String {
        tracing::debug!(error = %self, "authentication failed");
        match self {
            AuthError::Missing => "missing bearer token".into(),
            AuthError::Invalid(_) => "invalid or expired token".into(),
            AuthError::KeysUnavailable(_) => "the keys that sign tokens cannot be fetched now, retry later".into(),
        }
    }

    /// The HTTP API's answer.
    pub fn into_api_error(self) -> ApiError {
        match self {
            AuthError::KeysUnavailable(_) => ApiError::Unavailable(self.public_detail()),
            _ => ApiError::Unauthorized(self.public_detail()),
        }
    }
}

impl From<JwksError> for AuthError {
    fn from(e: JwksError) -> Self {
        match e {
            JwksError::UnknownKey(..) => AuthError::Invalid(e.to_string()),
            JwksError::Unavailable(_) => AuthError::KeysUnavailable(e.to_string()),
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    iat: Option<u64>,
}

/// Validates tokens; with `--dev-auth` it also mints them.
pub struct Authenticator {
    hs256: Option<(DecodingKey, EncodingKey)>,
    public: Option<(DecodingKey, Algorithm)>,
    jwks: Option<Arc<Jwks>>,
    issuer: Option<String>,
    audience: Option<String>,
    leeway: Duration,
    dev_auth: bool,
}

impl Authenticator {
    pub fn from_settings(jwt: &JwtSettings, dev_auth: bool) -> anyhow::Result<Self> {
        let hmac = |secret: &[u8]| -> anyhow::Result<(DecodingKey, EncodingKey)> {
            let invalid = |e| anyhow::anyhow!("--jwt-secret cannot be used as an HS256 key: {e}");
            Ok((DecodingKey::from_secret(secret).map_err(invalid)?, EncodingKey::from_secret(secret).map_err(invalid)?))
        };
        let mut hs256 = jwt.secret.as_ref().map(|s| hmac(s.expose().as_bytes())).transpose()?;
        if hs256.is_none() && dev_auth {
            // Dev tokens without a configured secret: a random per-process key, so they cannot outlive the process.
            let secret: [u8; 32] = rand::random();
            hs256 = Some(hmac(&secret)?);
        }
        let public = match &jwt.public_key {
            None => None,
            Some(path) => {
                let pem = std::fs::read(path).map_err(|e| anyhow::anyhow!("cannot read --jwt-public-key {}: {e}", path.display()))?;
                if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
                    Some((key, Algorithm::RS256))
                } else if let Ok(key) = DecodingKey::from_ec_pem(&pem) {
                    Some((key, Algorithm::ES256))
                } else {
                    anyhow::bail!("--jwt-public-key {} is neither an RSA nor an EC public key in PEM", path.display());
                }
            }
        };
        if dev_auth {
            tracing::warn!(
                "DEV SIGN-IN IS ON (--dev-auth): anyone who reaches POST /api/dev/token can act as any user; never run it where others can connect"
            );
        }
        let jwks = jwt.jwks_url.as_deref().map(|url| Jwks::new(url, jwt.jwks_refresh)).transpose()?;
        if (public.is_some() || jwks.is_some()) && jwt.audience.is_none() {
            // An identity provider signs tokens for many applications with one key.
            tracing::warn!(
                "--jwt-public-key or --jwt-jwks-url is set without --jwt-audience: tokens the identity provider issued for any other application are accepted; set the audience"
            );
        }
        Ok(Self { hs256, public, jwks, issuer: jwt.issuer.clone(), audience: jwt.audience.clone(), leeway: jwt.leeway, dev_auth })
    }

    pub fn dev_auth(&self) -> bool {
        self.dev_auth
    }

    /// Fetches the JWKS, if one is configured, so the first request does not wait for it. A
    /// provider that cannot be reached is not fatal: requests answer 503 until it can.
    pub async fn warm(&self) {
        // The fetch logs its own outcome; what a failure at start means is said here.
        if let Some(jwks) = &self.jwks
            && jwks.warm().await.is_err()
        {
            tracing::error!("no signing keys yet: requests with a token answer 503 until --jwt-jwks-url can be fetched");
        }
    }

    /// Validates a compact JWT and returns the caller named by its `sub`.
    pub async fn authenticate(&self, token: &str) -> Result<Caller, AuthError> {
        let header = decode_header(token).map_err(|e| AuthError::Invalid(e.to_string()))?;
        let fixed = match header.alg {
            Algorithm::HS256 => self.hs256.as_ref().map(|(d, _)| d),
            alg => self.public.as_ref().filter(|(_, a)| *a == alg).map(|(d, _)| d),
        };
        let fetched;
        let key = match (fixed, &self.jwks) {
            (Some(key), _) => key,
            (None, Some(jwks)) if header.alg != Algorithm::HS256 => {
                fetched = jwks.key(header.kid.as_deref(), header.alg).await?;
                &fetched
            }
            _ => return Err(AuthError::Invalid(format!("algorithm {:?} is not accepted", header.alg))),
        };
        let mut validation = Validation::new(header.alg);
        validation.leeway = self.leeway.as_secs();
        validation.validate_nbf = true;
        let mut required = vec!["exp", "sub"];
        if self.issuer.is_some() {
            required.push("iss");
        }
        if self.audience.is_some() {
            required.push("aud");
        }
        validation.set_required_spec_claims(&required);
        match &self.issuer {
            Some(iss) => validation.set_issuer(&[iss]),
            None => validation.iss = None,
        }
        match &self.audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        let data = decode::<Claims>(token, key, &validation).map_err(|e| AuthError::Invalid(e.to_string()))?;
        let user_id = UserId::parse(&data.claims.sub).map_err(AuthError::Invalid)?;
        Ok(Caller { user_id, expires_at: data.claims.exp.saturating_add(self.leeway.as_secs()) })
    }

    /// Mints an HS256 token for `user` (dev auth only); `None` when dev auth is off.
    pub fn mint(&self, user: &UserId, ttl: Duration) -> Option<String> {
        if !self.dev_auth {
            return None;
        }
        let (_, enc) = self.hs256.as_ref()?;
        let now = jsonwebtoken::get_current_timestamp();
        let claims = Claims { sub: user.to_string(), exp: now + ttl.as_secs(), iat: Some(now) };
        encode(&Header::new(Algorithm::HS256), &claims, enc).ok()
    }

    /// The bearer token of an API request: the `Authorization` header only. A token in a
    /// URL ends up in browser history, proxies and access logs, so only the hub takes one.
    pub fn token_from_header(headers: &actix_web::http::header::HeaderMap) -> Option<String> {
        let value = headers.get(actix_web::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok())?;
        let mut parts = value.splitn(2, ' ');
        match (parts.next(), parts.next()) {
            (Some(scheme), Some(token)) if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() => {
                Some(token.trim().to_owned())
            }
            _ => None,
        }
    }

    /// The token of a hub request: the header first, else the `access_token` query parameter
    /// (browsers cannot set headers on WebSockets).
    pub fn token_for_hub(headers: &actix_web::http::header::HeaderMap, query: &str) -> Option<String> {
        if let Some(token) = Self::token_from_header(headers) {
            return Some(token);
        }
        web::Query::<std::collections::HashMap<String, String>>::from_query(query)
            .ok()
            .and_then(|q| q.get("access_token").cloned())
            .filter(|t| !t.is_empty())
    }
}

impl FromRequest for Caller {
    type Error = ApiError;
    type Future = futures_util::future::LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let auth = req.app_data::<web::Data<Authenticator>>().cloned();
        let token = Authenticator::token_from_header(req.headers());
        Box::pin(async move {
            let auth = auth.ok_or_else(|| ApiError::Internal(anyhow::anyhow!("no authenticator configured")))?;
            let token = token.ok_or_else(|| ApiError::Unauthorized(AuthError::Missing.to_string()))?;
            auth.authenticate(&token).await.map_err(AuthError::into_api_error)
        })
    }
}
