//! Authentication (CONTRACT §2): every bad token is a 401 problem; `alg: none` and
//! algorithm confusion never pass; iss/aud are enforced when configured; dev tokens work
//! only with --dev-auth.

use base64::Engine;
use serde_json::{Value, json};

use crate::harness::{AppOptions, app::now, spawn_app, unique_user};

fn body() -> Value {
    json!({ "items": [{ "productId": "mug", "quantity": 1 }] })
}

fn b64(v: &Value) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_are_refused_with_401() {
    let app = spawn_app(AppOptions::default()).await;
    let user = unique_user("mallory");
    let claims = json!({ "sub": user, "exp": now() + 3600 });
    let wrong_secret =
        jsonwebtoken::encode(&Default::default(), &claims, &jsonwebtoken::EncodingKey::from_secret(b"not-the-secret").unwrap()).unwrap();
    let alg_none = format!("{}.{}.", b64(&json!({ "alg": "none", "typ": "JWT" })), b64(&claims));
    let expired = app.token_with(json!({ "sub": user, "exp": now() - 3600 }));
    let not_yet = app.token_with(json!({ "sub": user, "exp": now() + 7200, "nbf": now() + 3600 }));
    let no_sub = app.token_with(json!({ "exp": now() + 3600 }));
    let hidden_sub = app.token_with(json!({ "sub": format!("{user}\u{202E}"), "exp": now() + 3600 }));
    let slot_sub = app.token_with(json!({ "sub": format!("{{{user}}}"), "exp": now() + 3600 }));
    let valid = app.token(&user);
    // A valid signature with the body tampered afterwards.
    let mut parts: Vec<String> = valid.split('.').map(str::to_owned).collect();
    parts[1] = b64(&json!({ "sub": "alice", "exp": now() + 3600 }));
    let tampered = parts.join(".");

    let no_token = app.http.post(app.url("/api/orders")).json(&body()).send().await.unwrap();
    assert_eq!(no_token.status(), 401);
    assert_eq!(no_token.headers()["content-type"], "application/problem+json");
    for (name, token) in [
        ("wrong secret", wrong_secret),
        ("alg none", alg_none),
        ("expired", expired),
        ("nbf in the future", not_yet),
        ("no sub", no_sub),
        ("sub with a bidirectional control", hidden_sub),
        ("sub with braces", slot_sub),
        ("tampered", tampered),
        ("garbage", "abc".into()),
    ] {
        let res = app.post_order(&token, body(), None).await;
        assert_eq!(res.status(), 401, "{name}");
        let problem: Value = res.json().await.unwrap();
        assert_eq!(problem["status"], 401, "{name}");
        // Which check failed stays in the server's debug log: the client learns only this.
        assert_eq!(problem["detail"], "invalid or expired token", "{name}");
    }
    // A token in the query string is for the hub's WebSocket only, never the API.
    let in_query = app.http.post(app.url(&format!("/api/orders?access_token={valid}"))).json(&body()).send().await.unwrap();
    assert_eq!(in_query.status(), 401);
    let res = app.post_order(&valid, body(), None).await;
    assert_eq!(res.status(), 202);
    assert_eq!(app.count(&format!("SELECT count(*) AS n FROM orders WHERE user_id <> '{user}'")).await, 0, "no bad token created anything");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issuer_and_audience_are_enforced_when_configured() {
    let app = spawn_app(AppOptions {
        extra_args: vec!["--jwt-issuer".into(), "https://id.contoso.test".into(), "--jwt-audience".into(), "contoso-shop".into()],
        ..Default::default()
    })
    .await;
    let user = unique_user("alice");
    let good = app.token_with(json!({ "sub": user, "exp": now() + 3600, "iss": "https://id.contoso.test", "aud": "contoso-shop" }));
    let wrong_iss = app.token_with(json!({ "sub": user, "exp": now() + 3600, "iss": "https://evil.test", "aud": "contoso-shop" }));
    let wrong_aud = app.token_with(json!({ "sub": user, "exp": now() + 3600, "iss": "https://id.contoso.test", "aud": "other" }));
    let missing = app.token(&user);
    for (name, token) in [("wrong iss", &wrong_iss), ("wrong aud", &wrong_aud), ("neither", &missing)] {
        assert_eq!(app.post_order(token, body(), None).await.status(), 401, "{name}");
    }
    assert_eq!(app.post_order(&good, body(), None).await.status(), 202);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_hs256_token_is_refused_when_only_a_public_key_is_configured() {
    // Algorithm confusion: an attacker signs HS256 with the public key's bytes as the secret.
    let dir = std::env::temp_dir().join(format!("contoso-key-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let pem = dir.join("public.pem");
    std::fs::write(&pem, EC_PUBLIC_PEM).unwrap();
    let app = spawn_app(AppOptions {
        extra_args: vec!["--jwt-public-key".into(), pem.display().to_string()],
        no_jwt_secret: true,
        ..Default::default()
    })
    .await;
    let claims = json!({ "sub": "alice", "exp": now() + 3600 });
    let confused =
        jsonwebtoken::encode(&Default::default(), &claims, &jsonwebtoken::EncodingKey::from_secret(EC_PUBLIC_PEM.as_bytes()).unwrap())
            .unwrap();
    assert_eq!(app.post_order(&confused, body(), None).await.status(), 401);
    let es256 = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256),
        &claims,
        &jsonwebtoken::EncodingKey::from_ec_pem(EC_PRIVATE_PEM.as_bytes()).unwrap(),
    )
    .unwrap();
    assert_eq!(app.post_order(&es256, body(), None).await.status(), 202, "a token signed with the matching private key passes");
    app.stop().await;
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_rs256_public_key_accepts_its_own_tokens_with_the_audience_and_nothing_else() {
    // A fresh RSA key pair, as an identity provider would publish it.
    let dir = std::env::temp_dir().join(format!("contoso-rsa-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let (private, public) = (dir.join("private.pem"), dir.join("public.pem"));
    let openssl = |args: &[&str]| assert!(std::process::Command::new("openssl").args(args).status().unwrap().success(), "openssl {args:?}");
    openssl(&["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", private.to_str().unwrap()]);
    openssl(&["pkey", "-in", private.to_str().unwrap(), "-pubout", "-out", public.to_str().unwrap()]);
    let app = spawn_app(AppOptions {
        extra_args: vec!["--jwt-public-key".into(), public.display().to_string(), "--jwt-audience".into(), "contoso-shop".into()],
        no_jwt_secret: true,
        ..Default::default()
    })
    .await;
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(&std::fs::read(&private).unwrap()).unwrap();
    let sign = |claims: Value| jsonwebtoken::encode(&jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256), &claims, &key).unwrap();
    let user = unique_user("rsa");
    let good = sign(json!({ "sub": user, "exp": now() + 3600, "aud": "contoso-shop" }));
    assert_eq!(app.post_order(&good, body(), None).await.status(), 202);
    let other_app = sign(json!({ "sub": user, "exp": now() + 3600, "aud": "another-app" }));
    assert_eq!(app.post_order(&other_app, body(), None).await.status(), 401, "a token for another application");
    let no_aud = sign(json!({ "sub": user, "exp": now() + 3600 }));
    assert_eq!(app.post_order(&no_aud, body(), None).await.status(), 401, "a token without an audience");
    let public_pem = std::fs::read(&public).unwrap();
    let confused = jsonwebtoken::encode(
        &Default::default(),
        &json!({ "sub": user, "exp": now() + 3600, "aud": "contoso-shop" }),
        &jsonwebtoken::EncodingKey::from_secret(&public_pem).unwrap(),
    )
    .unwrap();
    assert_eq!(app.post_order(&confused, body(), None).await.status(), 401, "HS256 signed with the public key");
    app.stop().await;
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_tokens_are_minted_only_with_dev_auth() {
    let app = spawn_app(AppOptions { extra_args: vec!["--dev-auth".into()], ..Default::default() }).await;
    let user = unique_user("demo");
    let res = app.http.post(app.url("/api/dev/token")).json(&json!({ "userId": user })).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let token = res.json::<Value>().await.unwrap()["token"].as_str().unwrap().to_owned();
    let placed = app.post_order(&token, body(), None).await;
    assert_eq!(placed.status(), 202);
    let bad = app.http.post(app.url("/api/dev/token")).json(&json!({ "userId": "" })).send().await.unwrap();
    assert_eq!(bad.status(), 422);
    app.stop().await;
}

// A throwaway P-256 key pair generated for these tests only.
const EC_PRIVATE_PEM: &str = "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQggEogDi0d+RDynj6K\n+pgSBn+w7yklnwN+swJP+tcHAAKhRANCAATBNfKycXEwxymVIEHGHVfiOjmyk8/P\nEvkCj8TKwV/r1FfpQKITbdJH9kedRC4w2WEHviHCQUZ2TTnvNZNHjE4v\n-----END PRIVATE KEY-----\n";
pub(crate) const EC_PUBLIC_PEM: &str = "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEwTXysnFxMMcplSBBxh1X4jo5spPP\nzxL5Ao/EysFf69RX6UCiE23SR/ZHnUQuMNlhB74hwkFGdk057zWTR4xOLw==\n-----END PUBLIC KEY-----\n";
