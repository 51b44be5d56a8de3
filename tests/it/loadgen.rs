//! The load generator's smoke test: a tiny `targeted` run against a real notify process counts
//! every delivery, and a run whose notifications go where nobody listens reports all of them
//! as lost (the tool must never hide loss).

use serde_json::Value;

use crate::harness::{AppOptions, env, spawn_app};

const LOADGEN: &str = env!("CARGO_BIN_EXE_contoso-loadgen");

async fn targeted(url: &str, secret: &str, prefix: &str, hub_name: &str) -> Value {
    let out = std::env::temp_dir().join(format!("contoso-loadgen-smoke-{}.json", uuid::Uuid::new_v4().simple()));
    let status = tokio::process::Command::new(LOADGEN)
        .args(["targeted", "--hub-urls", url, "--jwt-secret", secret, "--users", "20", "--tabs", "2"])
        .args(["--rates", "200", "--duration", "1", "--subscription-wait", "2", "--settle", "2", "--redis-url", &env::redis_url()])
        .args(["--channel-prefix", prefix, "--hub-name", hub_name, "--out"])
        .arg(&out)
        .status()
        .await
        .unwrap();
    assert!(status.success(), "the load generator failed: {status:?}");
    let result: Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    let _ = std::fs::remove_file(out);
    result[0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tiny_targeted_run_counts_every_delivery_and_reports_loss() {
    let prefix = format!("t-{}-", uuid::Uuid::new_v4().simple());
    let app =
        spawn_app(AppOptions { roles: Some("notify"), extra_args: vec!["--channel-prefix".into(), prefix.clone()], ..Default::default() })
            .await;
    let url = format!("ws://127.0.0.1:{}/hubs/order-status", app.port);

    // 200 deliveries/s for 1 s: 100 notifications to 20 users, each with 2 tabs.
    let step = targeted(&url, &app.secret, &prefix, "Contoso.OrderNotification.Hubs.OrderStatusHub").await;
    assert_eq!(step["expected"], 200);
    assert_eq!(step["received"], 200, "{step}");
    assert_eq!(step["lost"], 0);
    assert_eq!(step["duplicates"], 0);
    assert!(step["latency"]["count"].as_u64() == Some(200), "every delivery is timed: {step}");

    // Published under another hub name: no tab can receive them, and the tool must say so.
    let lost = targeted(&url, &app.secret, &prefix, "Not.The.Hub").await;
    assert_eq!(lost["expected"], 200);
    assert_eq!(lost["received"], 0);
    assert_eq!(lost["lost"], 200, "{lost}");
    app.stop().await;
}
