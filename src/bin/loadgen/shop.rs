//! What the load generator does as the shop's users: holds a JWT per simulated user, minted
//! from the deployment's HS256 secret, and places an order through `POST /api/orders`.

use jsonwebtoken::{EncodingKey, Header, encode};
use serde_json::{Value, json};

/// Mints tokens valid for two hours, the longest run.
pub struct Minter {
    key: EncodingKey,
    exp: i64,
}

impl Minter {
    pub fn new(secret: &str) -> Self {
        Self { key: EncodingKey::from_secret(secret.as_bytes()).expect("an HS256 key"), exp: chrono::Utc::now().timestamp() + 7200 }
    }

    pub fn token(&self, sub: &str) -> anyhow::Result<String> {
        Ok(encode(&Header::default(), &json!({ "sub": sub, "exp": self.exp }), &self.key)?)
    }

    /// One token each for `{prefix}-0` .. `{prefix}-{n-1}`.
    pub fn tokens(&self, prefix: &str, n: usize) -> anyhow::Result<Vec<String>> {
        (0..n).map(|i| self.token(&format!("{prefix}-{i}"))).collect()
    }
}

/// Places a one-mug order; its correlation id, or `None` when it was not accepted (202).
pub async fn place_mug_order(client: &reqwest::Client, orders_url: &str, token: &str) -> Option<String> {
    let body = json!({ "items": [{ "productId": "mug", "quantity": 1 }] });
    let res = client.post(orders_url).bearer_auth(token).json(&body).send().await.ok()?;
    if res.status().as_u16() != 202 {
        return None;
    }
    res.json::<Value>().await.ok()?["correlationId"].as_str().map(str::to_owned)
}
