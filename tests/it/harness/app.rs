//! `spawn_app`: the real `App` on 127.0.0.1:0 with a fresh database, a unique bus prefix and
//! a random JWT secret; `TestApp` has typed helpers and `stop` removes what the test created.

use std::{path::PathBuf, time::Duration};

use contoso::{app::App, config::Settings, shutdown::Shutdown};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use jsonwebtoken::{EncodingKey, Header, encode};
use lapin::{
    Connection, ConnectionProperties,
    options::{ExchangeDeleteOptions, QueueDeleteOptions},
};
use serde_json::{Value, json};
use tokio::{sync::oneshot, task::JoinHandle};

use super::{ChaosProxy, env, eventually};

#[derive(Default)]
pub struct AppOptions<'a> {
    pub roles: Option<&'a str>,
    /// Route the database, Redis or RabbitMQ through a chaos proxy.
    pub db_proxy: Option<&'a ChaosProxy>,
    pub redis_proxy: Option<&'a ChaosProxy>,
    pub amqp_proxy: Option<&'a ChaosProxy>,
    pub extra_args: Vec<String>,
    /// Do not wait for readiness (a dependency is meant to be down at start).
    pub no_wait_ready: bool,
    /// Configure no HS256 secret (tests of public-key-only validation).
    pub no_jwt_secret: bool,
    /// Join another app's deployment: same database, bus prefix and secret (another pod).
    pub share: Option<&'a TestApp>,
    /// `--role all` with no Redis and no RabbitMQ: the embedded defaults, on a SQLite file of
    /// its own (or the one of `share`).
    pub embedded: bool,
    /// `--shutdown-timeout` in seconds (5 when not given).
    pub shutdown_timeout: Option<u64>,
}

pub struct TestApp {
    pub port: u16,
    pub base: String,
    pub http: reqwest::Client,
    pub secret: String,
    pub db_name: String,
    pub bus_prefix: String,
    pub drain_file: PathBuf,
    /// Whether `stop` removes the database and bus objects (false for a pod that joined).
    owns_resources: bool,
    /// The SQLite file of an embedded app (`db_name` is its path).
    embedded: bool,
    stop_tx: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
}

async fn admin() -> AsyncPgConnection {
    AsyncPgConnection::establish(&env::database_admin_url()).await.expect("postgres reachable at TEST_DATABASE_URL")
}

pub async fn spawn_app(opts: AppOptions<'_>) -> TestApp {
    init_test_logging();
    let id = uuid::Uuid::new_v4().simple().to_string();
    let (db_name, bus_prefix, secret) = match (opts.share, opts.embedded) {
        (Some(other), _) => (other.db_name.clone(), other.bus_prefix.clone(), other.secret.clone()),
        (None, true) => {
            let file = std::env::temp_dir().join(format!("contoso-t-{id}.db"));
            (file.display().to_string(), format!("t-{id}."), format!("secret-{id}"))
        }
        (None, false) => (create_database(&id).await, format!("t-{id}."), format!("secret-{id}")),
    };
    let drain_file = std::env::temp_dir().join(format!("contoso-drain-{id}"));

    let via = |url: String, proxy: Option<&ChaosProxy>| match proxy {
        Some(p) => env::with_host_port(&url, &p.addr),
        None => url,
    };
    let db_url = via(env::database_url(&db_name), opts.db_proxy);
    let redis_url = via(env::redis_url(), opts.redis_proxy);
    let amqp_url = via(env::amqp_url(), opts.amqp_proxy);
    let services = if opts.embedded {
        vec!["--role".into(), "all".into(), "--database-url".into(), format!("sqlite://{db_name}")]
    } else {
        vec![
            "--role".into(),
            opts.roles.unwrap_or("accept").into(),
            "--database-url".into(),
            db_url,
            "--redis-url".into(),
            redis_url,
            "--amqp-url".into(),
            amqp_url,
        ]
    };
    let mut args: Vec<String> = vec!["contoso".into()];
    args.extend(services);
    args.extend([
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--bus-prefix".into(),
        bus_prefix.clone(),
        "--drain-file".into(),
        drain_file.display().to_string(),
        "--http-workers".into(),
        "1".into(),
        "--db-pool-size".into(),
        "4".into(),
        "--outbox-poll-ms".into(),
        "100".into(),
        "--shutdown-timeout".into(),
        opts.shutdown_timeout.unwrap_or(5).to_string(),
    ]);
    if !opts.no_jwt_secret {
        args.extend(["--jwt-secret".into(), secret.clone()]);
    }
    args.extend(opts.extra_args);
    let settings = Settings::try_from_args(args).expect("valid test settings");
    let shutdown = Shutdown::new(settings.drain_file.clone());
    let app = App::build(settings, shutdown).await.expect("app builds");
    let port = app.port();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let handle = tokio::spawn(app.run_until_stopped(async move {
        let _ = stop_rx.await;
    }));
    let test_app = TestApp {
        port,
        base: format!("http://127.0.0.1:{port}"),
        http: reqwest::Client::builder().timeout(Duration::from_secs(15)).build().unwrap(),
        secret,
        db_name,
        bus_prefix,
        drain_file,
        owns_resources: opts.share.is_none(),
        embedded: opts.embedded,
        stop_tx: Some(stop_tx),
        handle: Some(handle),
    };
    if !opts.no_wait_ready {
        test_app.wait_ready().await;
    }
    test_app
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub async fn wait_ready(&self) {
        eventually(Duration::from_secs(30), "readiness", || async {
            let res = self.http.get(self.url("/health/ready")).send().await.ok()?;
            (res.status() == 200).then_some(())
        })
        .await;
    }

    pub async fn ready_status(&self) -> (u16, Value) {
        let res = self.http.get(self.url("/health/ready")).send().await.unwrap();
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    /// An HS256 token for `user` signed with this app's secret, valid for an hour.
    pub fn token(&self, user: &str) -> String {
        self.token_with(json!({ "sub": user, "exp": now() + 3600 }))
    }

    pub fn token_with(&self, claims: Value) -> String {
        encode(&Header::default(), &claims, &EncodingKey::from_secret(self.secret.as_bytes()).unwrap()).unwrap()
    }

    pub async fn post_order(&self, token: &str, body: Value, key: Option<&str>) -> reqwest::Response {
        let mut req = self.http.post(self.url("/api/orders")).bearer_auth(token).json(&body);
        if let Some(key) = key {
            req = req.header("Idempotency-Key", key);
        }
        req.send().await.unwrap()
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> reqwest::Response {
        let mut req = self.http.get(self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send().await.unwrap()
    }

    /// A connection to this app's own database (for assertions on rows).
    pub async fn db(&self) -> AsyncPgConnection {
        AsyncPgConnection::establish(&env::database_url(&self.db_name)).await.unwrap()
    }

    /// Places `n` orders of `body` for `token` and returns their correlation ids.
    pub async fn place_orders(&self, token: &str, body: &Value, n: usize) -> Vec<String> {
        let mut ids = Vec::with_capacity(n);
        for _ in 0..n {
            let res = self.post_order(token, body.clone(), None).await;
            assert_eq!(res.status(), 202);
            ids.push(res.json::<Value>().await.unwrap()["correlationId"].as_str().unwrap().to_owned());
        }
        ids
    }

    /// The order's status in the database.
    pub async fn status_of(&self, id: &str) -> String {
        #[derive(diesel::QueryableByName)]
        struct Row {
            #[diesel(sql_type = diesel::sql_types::Text)]
            status: String,
        }
        let rows: Vec<Row> =
            diesel::sql_query(format!("SELECT status FROM orders WHERE correlation_id = '{id}'")).load(&mut self.db().await).await.unwrap();
        rows.into_iter().next().map(|r| r.status).unwrap_or_default()
    }

    pub async fn count(&self, sql: &str) -> i64 {
        count_in(&self.db_name, sql).await
    }

    /// Graceful stop (the SIGTERM path), then removes the database, queues and exchanges.
    pub async fn stop(mut self) {
        self.halt().await;
        if self.owns_resources && self.embedded {
            self.remove_embedded_database();
        } else if self.owns_resources {
            drop_database(&self.db_name).await;
            delete_bus_objects(&self.bus_prefix).await;
        }
    }

    /// Stops gracefully and removes nothing: another app may still `share` this one's data.
    pub async fn halt(&mut self) {
        if let Some(tx) = self.stop_tx.take() {
            let _ = tx.send(());
        }
        if let Some(handle) = self.handle.take() {
            handle.await.expect("app task").expect("app stopped cleanly");
        }
        let _ = std::fs::remove_file(&self.drain_file);
    }

    /// Removes the SQLite file of an embedded app and its WAL companions.
    pub fn remove_embedded_database(&self) {
        remove_sqlite_file(&self.db_name);
    }
}

/// Removes a SQLite database file and its WAL companions.
pub fn remove_sqlite_file(path: &str) {
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{path}{suffix}"));
    }
}

/// A new, empty database `contoso_t_{id}`; the app migrates it.
/// The `n` of a `SELECT count(*) AS n ...` on the database `db_name`.
pub async fn count_in(db_name: &str, sql: &str) -> i64 {
    #[derive(diesel::QueryableByName)]
    struct Count {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let mut conn = AsyncPgConnection::establish(&env::database_url(db_name)).await.unwrap();
    let rows: Vec<Count> = diesel::sql_query(sql).load(&mut conn).await.unwrap();
    rows[0].n
}

pub async fn create_database(id: &str) -> String {
    let db_name = format!("contoso_t_{id}");
    diesel::sql_query(format!("CREATE DATABASE \"{db_name}\"")).execute(&mut admin().await).await.unwrap();
    db_name
}

pub async fn drop_database(name: &str) {
    diesel::sql_query(format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)")).execute(&mut admin().await).await.unwrap();
}

pub async fn delete_bus_objects(prefix: &str) {
    let Ok(conn) = Connection::connect(&env::amqp_url(), ConnectionProperties::default()).await else { return };
    let ch = conn.create_channel().await.unwrap();
    for q in ["contoso.order-process", "contoso.order-notification"] {
        for name in [format!("{prefix}{q}"), format!("{prefix}{q}.dead-letter")] {
            let _ = ch.queue_delete(name.into(), QueueDeleteOptions::default()).await;
        }
    }
    for ex in ["contoso.orders", "contoso.orders.dead-letter"] {
        let _ = ch.exchange_delete(format!("{prefix}{ex}").into(), ExchangeDeleteOptions::default()).await;
    }
    let _ = conn.close(200, "bye".into()).await;
}

pub fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

fn init_test_logging() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if let Ok(filter) = std::env::var("TEST_LOG") {
            contoso::telemetry::init_logging(contoso::config::LogFormat::Pretty, &filter);
        }
    });
}
