//! What can be set: every setting as a flag, its `CONTOSO_*` variable and its key in the
//! `--config` file, with its help text. All optional here; `Settings::load` in `config.rs`
//! merges them and gives them their defaults and meaning.

use std::{net::SocketAddr, path::PathBuf};

use clap::{Parser, builder::BoolishValueParser};
use serde::Deserialize;

use super::{LogFormat, PubSub, QueueType, RedisMode, Secret};

/// The raw settings as clap and the config file see them: every field optional, so the
/// merge can tell "not given" from "given as the default".
#[derive(Debug, Default, Parser, Deserialize)]
#[command(name = "contoso", version, about = "Contoso order notifications: order API, processor and SignalR hub in one binary")]
#[serde(default, deny_unknown_fields)]
pub struct RawSettings {
    /// Roles to run: accept, process, notify, all, or a comma list such as accept,notify (required)
    #[arg(long, env = "CONTOSO_ROLE")]
    pub role: Option<String>,
    /// TOML file with settings (keys are the flag names with '_' for '-'); flags and environment win over it
    #[arg(long, env = "CONTOSO_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// HTTP and WebSocket listen address [default: 0.0.0.0:8080]
    #[arg(long, env = "CONTOSO_LISTEN", help_heading = "HTTP and logs")]
    pub listen: Option<SocketAddr>,
    /// Serve /metrics and /health/* on this address only, apart from the public port [default: on the public port]
    #[arg(long, env = "CONTOSO_ADMIN_LISTEN", help_heading = "HTTP and logs")]
    pub admin_listen: Option<SocketAddr>,
    /// postgres://... (production) or sqlite://PATH; required except for role all [all: sqlite://contoso.db]
    #[arg(long, env = "CONTOSO_DATABASE_URL", hide_env_values = true, help_heading = "Dependencies")]
    pub database_url: Option<Secret>,
    /// redis://host:port/db; required except for role all [all: in-process status cache, log and backplane]
    #[arg(long, env = "CONTOSO_REDIS_URL", hide_env_values = true, help_heading = "Dependencies")]
    pub redis_url: Option<Secret>,
    /// standalone (--redis-url is one server) or cluster (--redis-url lists seed nodes of a Redis Cluster, comma-separated) [default: standalone]
    #[arg(long, env = "CONTOSO_REDIS_MODE", value_enum, help_heading = "Dependencies")]
    pub redis_mode: Option<RedisMode>,
    /// Notify: backplane pub/sub, classic (PUBLISH, what ASP.NET Core speaks) or sharded (SPUBLISH, cluster only) [default: classic standalone, sharded on a cluster]
    #[arg(long, env = "CONTOSO_BACKPLANE_PUBSUB", value_enum, help_heading = "Notify (the hub)")]
    pub backplane_pubsub: Option<PubSub>,
    /// amqp://user:pass@host:5672/%2f; required except for role all [all: in-process event bus]
    #[arg(long, env = "CONTOSO_AMQP_URL", hide_env_values = true, help_heading = "Dependencies")]
    pub amqp_url: Option<Secret>,
    /// HS256 shared secret for JWT validation
    #[arg(long, env = "CONTOSO_JWT_SECRET", hide_env_values = true, help_heading = "Authentication")]
    pub jwt_secret: Option<Secret>,
    /// PEM file with the RS256 or ES256 public key for JWT validation
    #[arg(long, env = "CONTOSO_JWT_PUBLIC_KEY", help_heading = "Authentication")]
    pub jwt_public_key: Option<PathBuf>,
    /// URL of the identity provider's JWKS (RS*, PS*, ES*, EdDSA keys picked by kid; rotation without a restart)
    #[arg(long, env = "CONTOSO_JWT_JWKS_URL", help_heading = "Authentication")]
    pub jwt_jwks_url: Option<String>,
    /// Seconds between fetches of the JWKS; an unknown kid fetches at once, at most every 5 s [default: 300]
    #[arg(long, env = "CONTOSO_JWT_JWKS_REFRESH_SECS", help_heading = "Authentication")]
    pub jwt_jwks_refresh_secs: Option<u64>,
    /// Required token issuer (iss); not checked when unset
    #[arg(long, env = "CONTOSO_JWT_ISSUER", help_heading = "Authentication")]
    pub jwt_issuer: Option<String>,
    /// Required token audience (aud); not checked when unset
    #[arg(long, env = "CONTOSO_JWT_AUDIENCE", help_heading = "Authentication")]
    pub jwt_audience: Option<String>,
    /// Clock skew allowed on exp and nbf, in seconds [default: 30]
    #[arg(long, env = "CONTOSO_JWT_LEEWAY", help_heading = "Authentication")]
    pub jwt_leeway: Option<u64>,
    /// Redis backplane channel prefix [default: contoso-signalr]
    #[arg(long, env = "CONTOSO_CHANNEL_PREFIX", help_heading = "Notify (the hub)")]
    pub channel_prefix: Option<String>,
    /// Hub name in backplane channels [default: Contoso.OrderNotification.Hubs.OrderStatusHub]
    #[arg(long, env = "CONTOSO_HUB_NAME", help_heading = "Notify (the hub)")]
    pub hub_name: Option<String>,
    /// Simulated work per order in role process, in milliseconds [default: 500]
    #[arg(long, env = "CONTOSO_PROCESS_DELAY_MS", help_heading = "Process")]
    pub process_delay_ms: Option<u64>,
    /// TTL of order:map:* and order:status:*, in seconds [default: 86400]
    #[arg(long, env = "CONTOSO_STATUS_TTL", help_heading = "Accept")]
    pub status_ttl: Option<u64>,
    /// While this file exists, readiness fails [default: /tmp/draining]
    #[arg(long, env = "CONTOSO_DRAIN_FILE", help_heading = "Lifecycle")]
    pub drain_file: Option<PathBuf>,
    /// Seconds from SIGTERM to exit, at most [default: 25]
    #[arg(long, env = "CONTOSO_SHUTDOWN_TIMEOUT", help_heading = "Lifecycle")]
    pub shutdown_timeout: Option<u64>,
    /// Notify: seconds over which Close messages are spread on SIGTERM [default: 5]
    #[arg(long, env = "CONTOSO_DRAIN_SPREAD", help_heading = "Lifecycle")]
    pub drain_spread: Option<u64>,
    /// Enable POST /api/dev/token (never in production) [default: off]
    #[arg(long, env = "CONTOSO_DEV_AUTH", num_args = 0..=1, default_missing_value = "true", value_parser = BoolishValueParser::new(), help_heading = "Authentication")]
    pub dev_auth: Option<bool>,
    /// Log format, json or pretty [default: json]
    #[arg(long, env = "CONTOSO_LOG_FORMAT", value_enum, help_heading = "HTTP and logs")]
    pub log_format: Option<LogFormat>,
    /// Log filter in tracing's EnvFilter syntax [default: info]
    #[arg(long, env = "CONTOSO_LOG_LEVEL", help_heading = "HTTP and logs")]
    pub log_level: Option<String>,
    /// Send traces (OTLP over HTTP, JSON) to this collector, e.g. http://otel-collector:4318 [default: no traces]
    #[arg(long, env = "CONTOSO_OTLP_ENDPOINT", help_heading = "HTTP and logs")]
    pub otlp_endpoint: Option<String>,
    /// Unacknowledged deliveries per consumer (also the processing concurrency) [default: 32]
    #[arg(long, env = "CONTOSO_PREFETCH", help_heading = "Dependencies")]
    pub prefetch: Option<u16>,
    /// Prefix for every exchange and queue name, to share a vhost between isolated deployments or test runs [default: none]
    #[arg(long, env = "CONTOSO_BUS_PREFIX", help_heading = "Dependencies")]
    pub bus_prefix: Option<String>,
    /// Database connections per pool [default: 16]
    #[arg(long, env = "CONTOSO_DB_POOL_SIZE", help_heading = "Dependencies")]
    pub db_pool_size: Option<usize>,
    /// Outbox relay poll interval in milliseconds (it also wakes at once after each commit) [default: 500]
    #[arg(long, env = "CONTOSO_OUTBOX_POLL_MS", help_heading = "Accept")]
    pub outbox_poll_ms: Option<u64>,
    /// Kind of the work and dead-letter queues: quorum (replicated, the broker counts deliveries) or classic (one node, each process counts redeliveries) [default: quorum]
    #[arg(long, env = "CONTOSO_QUEUE_TYPE", value_enum, help_heading = "Dependencies")]
    pub queue_type: Option<QueueType>,
    /// Deliveries of one message before it is dead-lettered (quorum queue delivery limit) [default: 10]
    #[arg(long, env = "CONTOSO_DELIVERY_LIMIT", help_heading = "Dependencies")]
    pub delivery_limit: Option<u32>,
    /// Milliseconds a request's body may take to arrive, then 408 [default: 10000]
    #[arg(long, env = "CONTOSO_REQUEST_BODY_TIMEOUT_MS", help_heading = "HTTP and logs")]
    pub request_body_timeout_ms: Option<u64>,
    /// HTTP worker threads [default: number of CPUs]
    #[arg(long, env = "CONTOSO_HTTP_WORKERS", help_heading = "HTTP and logs")]
    pub http_workers: Option<usize>,
    /// Notify: send a Ping after this many milliseconds without sending [default: 15000]
    #[arg(long, env = "CONTOSO_KEEP_ALIVE_INTERVAL_MS", help_heading = "Notify (the hub)")]
    pub keep_alive_interval_ms: Option<u64>,
    /// Notify: close a connection silent for this many milliseconds, counted from its handshake [default: 30000]
    #[arg(long, env = "CONTOSO_CLIENT_TIMEOUT_MS", help_heading = "Notify (the hub)")]
    pub client_timeout_ms: Option<u64>,
    /// Notify: milliseconds a client has to send its handshake [default: 15000]
    #[arg(long, env = "CONTOSO_HANDSHAKE_TIMEOUT_MS", help_heading = "Notify (the hub)")]
    pub handshake_timeout_ms: Option<u64>,
    /// Notify: largest incoming hub message in bytes [default: 32768]
    #[arg(long, env = "CONTOSO_MAX_MESSAGE_SIZE", help_heading = "Notify (the hub)")]
    pub max_message_size: Option<usize>,
    /// Notify: outgoing messages queued per connection before a slow client is closed [default: 64]
    #[arg(long, env = "CONTOSO_SEND_QUEUE", help_heading = "Notify (the hub)")]
    pub send_queue: Option<usize>,
    /// Notify: key signing negotiate connection tokens, shared by all notify pods [default: derived from the JWT secret]
    #[arg(long, env = "CONTOSO_NEGOTIATE_SECRET", hide_env_values = true, help_heading = "Notify (the hub)")]
    pub negotiate_secret: Option<Secret>,
    /// Notify: connections this process takes, then 503 (0: no limit) [default: 50000]
    #[arg(long, env = "CONTOSO_MAX_CONNECTIONS", help_heading = "Notify (the hub)")]
    pub max_connections: Option<usize>,
    /// Notify: connections one user may hold on this process, then 429 (0: no limit) [default: 32]
    #[arg(long, env = "CONTOSO_MAX_CONNECTIONS_PER_USER", help_heading = "Notify (the hub)")]
    pub max_connections_per_user: Option<usize>,
    /// Notify: close a connection when its token expires, so it reconnects with a fresh one [default: true]
    #[arg(long, env = "CONTOSO_CLOSE_ON_TOKEN_EXPIRY", num_args = 0..=1, default_missing_value = "true", value_parser = BoolishValueParser::new(), help_heading = "Notify (the hub)")]
    pub close_on_token_expiry: Option<bool>,
    /// Notify: hub invocations per second per connection, in bursts of twice as many (0: no limit) [default: 10]
    #[arg(long, env = "CONTOSO_HUB_INVOCATIONS_PER_SECOND", help_heading = "Notify (the hub)")]
    pub hub_invocations_per_second: Option<u32>,
    /// Notify: seconds a dropped stateful-reconnect connection may be resumed, on any notify process (0: stateful reconnect off) [default: 30]
    #[arg(long, env = "CONTOSO_STATEFUL_RECONNECT_WINDOW", help_heading = "Notify (the hub)")]
    pub stateful_reconnect_window: Option<u64>,
    /// Notify: bytes of unacknowledged messages kept per stateful-reconnect connection; past it the connection cannot be resumed [default: 100000]
    #[arg(long, env = "CONTOSO_STATEFUL_RECONNECT_BUFFER", help_heading = "Notify (the hub)")]
    pub stateful_reconnect_buffer: Option<usize>,
    /// Accept: orders per second per user, in bursts of four times as many, then 429 (0: no limit) [default: 10]
    #[arg(long, env = "CONTOSO_ORDERS_PER_SECOND_PER_USER", help_heading = "Accept")]
    pub orders_per_second_per_user: Option<u32>,
    /// Notify: milliseconds between the Redis backplane's canaries to itself (0: no self-check) [default: 5000]
    #[arg(long, env = "CONTOSO_BACKPLANE_CHECK_INTERVAL_MS", help_heading = "Notify (the hub)")]
    pub backplane_check_interval_ms: Option<u64>,
    /// Notify: notifications kept per user for ResumeNotifications [default: 1000]
    #[arg(long, env = "CONTOSO_NOTIFICATION_LOG_MAX", help_heading = "Notify (the hub)")]
    pub notification_log_max: Option<u64>,
    /// Notify: seconds a notification is kept for ResumeNotifications [default: 86400]
    #[arg(long, env = "CONTOSO_NOTIFICATION_LOG_TTL", help_heading = "Notify (the hub)")]
    pub notification_log_ttl: Option<u64>,
}
