//! `--jwt-jwks-url`: tokens are checked with the key their `kid` names in the identity
//! provider's key set, a rotated key is taken without a restart and a removed one refused, made-up
//! `kid`s cannot make the process hammer the provider, and a provider that cannot be reached
//! answers 503 until it can.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use jsonwebtoken::{Algorithm, EncodingKey, Header, jwk::Jwk};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::{AppOptions, TestApp, app::now, eventually, spawn_app, unique_user};

/// A local identity provider's JWKS endpoint: serves whatever key set it holds now.
struct JwksServer {
    addr: SocketAddr,
    keys: Arc<Mutex<Value>>,
    requests: Arc<AtomicUsize>,
}

impl JwksServer {
    async fn start(listener: tokio::net::TcpListener) -> Self {
        let (keys, requests) = (Arc::new(Mutex::new(json!({ "keys": [] }))), Arc::new(AtomicUsize::new(0)));
        let addr = listener.local_addr().unwrap();
        let (served, count) = (keys.clone(), requests.clone());
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let (served, count) = (served.clone(), count.clone());
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        match socket.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                    }
                    count.fetch_add(1, Ordering::SeqCst);
                    let body = served.lock().unwrap().to_string();
                    let head = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = socket.write_all(head.as_bytes()).await;
                    let _ = socket.write_all(body.as_bytes()).await;
                });
            }
        });
        Self { addr, keys, requests }
    }

    fn url(&self) -> String {
        format!("http://{}/.well-known/jwks.json", self.addr)
    }

    fn publish(&self, keys: &[&SigningKey]) {
        *self.keys.lock().unwrap() = json!({ "keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>() });
    }
}

/// An ES256 key pair with its `kid`, as the identity provider holds it.
struct SigningKey {
    kid: String,
    private: EncodingKey,
    jwk: Value,
}

impl SigningKey {
    fn new(kid: &str) -> Self {
        let out = std::process::Command::new("openssl")
            .args(["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"])
            .output()
            .expect("openssl runs");
        assert!(out.status.success(), "openssl genpkey");
        let private = EncodingKey::from_ec_pem(&out.stdout).unwrap();
        let mut jwk = serde_json::to_value(Jwk::from_encoding_key(&private, Algorithm::ES256).unwrap()).unwrap();
        jwk["kid"] = kid.into();
        jwk["use"] = "sig".into();
        Self { kid: kid.into(), private, jwk }
    }

    fn sign(&self, user: &str) -> String {
        self.sign_as(user, Some(&self.kid))
    }

    fn sign_as(&self, user: &str, kid: Option<&str>) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = kid.map(str::to_owned);
        let claims = json!({ "sub": user, "exp": now() + 3600, "aud": "contoso-shop" });
        jsonwebtoken::encode(&header, &claims, &self.private).unwrap()
    }
}

fn body() -> Value {
    json!({ "items": [{ "productId": "mug", "quantity": 1 }] })
}

async fn app_with_jwks(url: &str) -> TestApp {
    spawn_app(AppOptions {
        roles: Some("accept,notify"),
        extra_args: vec!["--jwt-jwks-url".into(), url.into(), "--jwt-audience".into(), "contoso-shop".into()],
        no_jwt_secret: true,
        ..Default::default()
    })
    .await
}

async fn status_with(app: &TestApp, token: &str) -> u16 {
    app.post_order(token, body(), None).await.status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_checked_with_the_key_their_kid_names_and_a_rotation_needs_no_restart() {
    let server = JwksServer::start(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap()).await;
    let (old, new) = (SigningKey::new("2026-11"), SigningKey::new("2026-12"));
    server.publish(&[&old]);
    let app = app_with_jwks(&server.url()).await;
    let user = unique_user("jwks");

    assert_eq!(status_with(&app, &old.sign(&user)).await, 202);
    assert_eq!(status_with(&app, &new.sign_as(&user, Some(&old.kid))).await, 401, "another key under the known kid");
    assert_eq!(status_with(&app, &new.sign(&user)).await, 401, "a key the provider has not published");

    // The provider rotates: the new key only. Its tokens pass once the set is fetched again,
    // which an unknown kid does at once (at most every few seconds), without a restart.
    server.publish(&[&new]);
    eventually(Duration::from_secs(20), "the rotated key is accepted", || async {
        (status_with(&app, &new.sign(&user)).await == 202).then_some(())
    })
    .await;
    assert_eq!(status_with(&app, &old.sign(&user)).await, 401, "the removed key is no longer accepted");
    assert_eq!(status_with(&app, &new.sign_as(&user, None)).await, 202, "no kid, one ES256 key: unambiguous");

    // HS256 signed with the public key's JWK text: algorithm confusion finds no key.
    let confused = jsonwebtoken::encode(
        &Header::default(),
        &json!({ "sub": user, "exp": now() + 3600, "aud": "contoso-shop" }),
        &EncodingKey::from_secret(new.jwk.to_string().as_bytes()).unwrap(),
    )
    .unwrap();
    assert_eq!(status_with(&app, &confused).await, 401);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_up_kids_cannot_make_the_process_hammer_the_provider() {
    let server = JwksServer::start(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap()).await;
    let key = SigningKey::new("only");
    server.publish(&[&key]);
    let app = app_with_jwks(&server.url()).await;
    let user = unique_user("jwks-flood");
    assert_eq!(status_with(&app, &key.sign(&user)).await, 202);
    let before = server.requests.load(Ordering::SeqCst);
    for i in 0..40 {
        assert_eq!(status_with(&app, &key.sign_as(&user, Some(&format!("made-up-{i}")))).await, 401);
    }
    let fetched = server.requests.load(Ordering::SeqCst) - before;
    assert!(fetched <= 2, "40 tokens with unknown kids fetched the key set {fetched} times");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_provider_answers_503_until_it_can_be_reached() {
    // A port nobody listens on yet; the provider comes up there later.
    let reserved = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = reserved.local_addr().unwrap();
    drop(reserved);
    let app = app_with_jwks(&format!("http://{addr}/.well-known/jwks.json")).await;
    let key = SigningKey::new("late");
    let user = unique_user("jwks-down");
    let refused = app.post_order(&key.sign(&user), body(), None).await;
    assert_eq!(refused.status(), 503, "the keys cannot be fetched: retry, do not sign out");
    assert!(refused.headers().contains_key("retry-after"));
    let negotiate =
        app.http.post(app.url("/hubs/order-status/negotiate?negotiateVersion=1")).bearer_auth(key.sign(&user)).send().await.unwrap();
    assert_eq!(negotiate.status(), 503, "the hub answers the same");

    let server = JwksServer::start(tokio::net::TcpListener::bind(addr).await.unwrap()).await;
    server.publish(&[&key]);
    eventually(Duration::from_secs(20), "the provider's keys are fetched once it is up", || async {
        (status_with(&app, &key.sign(&user)).await == 202).then_some(())
    })
    .await;
    let negotiate =
        app.http.post(app.url("/hubs/order-status/negotiate?negotiateVersion=1")).bearer_auth(key.sign(&user)).send().await.unwrap();
    assert_eq!(negotiate.status(), 200, "and the hub takes the token too");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwks_url_that_is_not_http_is_refused_at_start() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_contoso"))
        .args(["--role", "accept", "--jwt-jwks-url", "file:///etc/passwd", "--database-url", "postgres://x", "--redis-url", "redis://x"])
        .args(["--amqp-url", "amqp://x"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--jwt-jwks-url"), "the error names the setting: {stderr}");
}
