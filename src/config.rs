//! Settings: every setting is a flag, a `CONTOSO_*` variable and a key of the optional
//! `--config` TOML file, merged flag > environment > file > default (CONTRACT §1).
//! `Settings::load` is the only place that reads the environment or the file.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Parser, builder::BoolishValueParser};
use serde::Deserialize;

pub use crate::{
    backplane::cluster::PubSub, bus::QueueType, http::auth::JwtSettings, redis_client::RedisMode, secret::Secret, telemetry::LogFormat,
};

/// Where `--role all` keeps its orders when no `--database-url` is given.
pub const EMBEDDED_DATABASE_URL: &str = "sqlite://contoso.db";

mod roles;
pub use roles::{Role, RoleSet};

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

/// The typed, merged settings every other module receives.
#[derive(Debug, Clone)]
pub struct Settings {
    pub roles: RoleSet,
    pub listen: SocketAddr,
    /// Where /metrics and /health/* are served when not on `listen`.
    pub admin_listen: Option<SocketAddr>,
    pub database_url: Option<Secret>,
    pub redis_url: Option<Secret>,
    pub redis_mode: RedisMode,
    pub backplane_pubsub: PubSub,
    pub amqp_url: Option<Secret>,
    pub jwt: JwtSettings,
    pub channel_prefix: String,
    pub hub_name: String,
    pub process_delay: Duration,
    pub status_ttl: Duration,
    pub drain_file: PathBuf,
    pub shutdown_timeout: Duration,
    pub drain_spread: Duration,
    pub dev_auth: bool,
    pub log_format: LogFormat,
    pub log_level: String,
    /// The OTLP/HTTP collector traces go to; none when tracing is off.
    pub otlp_endpoint: Option<String>,
    pub prefetch: u16,
    pub bus_prefix: String,
    pub db_pool_size: usize,
    pub outbox_poll: Duration,
    pub delivery_limit: u32,
    pub queue_type: QueueType,
    pub http_workers: Option<usize>,
    pub request_body_timeout: Duration,
    pub hub: crate::hub::HubSettings,
    pub negotiate_secret: Option<Secret>,
    pub retention: crate::cache::Retention,
    pub orders_per_second_per_user: u32,
    /// `None`: the backplane does not check itself.
    pub backplane_check_interval: Option<Duration>,
}

/// A settings problem, printed as the single line the process exits with.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("missing {flag} ({env}), required by role {role}")]
    Missing { flag: String, env: String, role: String },
    #[error("invalid --role (CONTOSO_ROLE): {0}")]
    Role(String),
    #[error("missing --role (CONTOSO_ROLE): valid roles are accept, process, notify, all")]
    NoRole,
    #[error("cannot read config file {path}: {message}")]
    File { path: String, message: String },
    #[error("invalid {flag} ({env}): {message}")]
    Invalid { flag: String, env: String, message: String },
}

impl Settings {
    /// Parses the process's flags and environment (and the config file they name).
    /// `--help` and `--version` print and exit here, as clap does.
    pub fn load() -> Result<Self, SettingsError> {
        Self::from_raw(RawSettings::parse())
    }

    /// Parses explicit arguments; the environment is still read (clap's `env`), as in production.
    pub fn try_from_args<I, T>(args: I) -> Result<Self, SettingsError>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let raw = RawSettings::try_parse_from(args).map_err(|e| SettingsError::Invalid {
            flag: "arguments".into(),
            env: "-".into(),
            message: e.to_string().lines().next().unwrap_or_default().to_owned(),
        })?;
        Self::from_raw(raw)
    }

    pub fn from_raw(cli: RawSettings) -> Result<Self, SettingsError> {
        let file = match &cli.config {
            Some(path) => read_file(path)?,
            None => RawSettings::default(),
        };
        macro_rules! pick {
            ($field:ident) => {
                cli.$field.clone().or(file.$field.clone())
            };
        }
        // A value below its minimum is refused, naming the flag and variable, rather than
        // quietly raised: whoever set it meant something else.
        macro_rules! at_least {
            ($field:ident, $default:expr, $min:expr) => {{
                let value = pick!($field).unwrap_or($default);
                if value < $min {
                    let flag = concat!("--", stringify!($field));
                    return Err(SettingsError::Invalid {
                        flag: flag.replace('_', "-"),
                        env: format!("CONTOSO_{}", stringify!($field).to_uppercase()),
                        message: format!("{value} is below the minimum of {}", $min),
                    });
                }
                value
            }};
        }
        let roles_raw = pick!(role).ok_or(SettingsError::NoRole)?;
        let roles: RoleSet = roles_raw.parse().map_err(SettingsError::Role)?;
        let settings = Settings {
            listen: pick!(listen).unwrap_or_else(|| "0.0.0.0:8080".parse().expect("valid default")),
            admin_listen: pick!(admin_listen),
            // `all` without a database runs on an embedded SQLite file (CONTRACT §1).
            database_url: pick!(database_url).or_else(|| roles.all.then(|| Secret::new(EMBEDDED_DATABASE_URL))),
            redis_url: pick!(redis_url),
            redis_mode: pick!(redis_mode).unwrap_or_default(),
            backplane_pubsub: pick!(backplane_pubsub).unwrap_or(match pick!(redis_mode).unwrap_or_default() {
                RedisMode::Standalone => PubSub::Classic,
                RedisMode::Cluster => PubSub::Sharded,
            }),
            amqp_url: pick!(amqp_url),
            jwt: JwtSettings {
                secret: pick!(jwt_secret).filter(|s| !s.expose().is_empty()),
                public_key: pick!(jwt_public_key),
                jwks_url: pick!(jwt_jwks_url).filter(|u| !u.is_empty()),
                jwks_refresh: Duration::from_secs(at_least!(jwt_jwks_refresh_secs, 300, 10)),
                issuer: pick!(jwt_issuer),
                audience: pick!(jwt_audience),
                leeway: Duration::from_secs(pick!(jwt_leeway).unwrap_or(30)),
            },
            channel_prefix: pick!(channel_prefix).unwrap_or_else(|| "contoso-signalr".into()),
            hub_name: pick!(hub_name).unwrap_or_else(|| "Contoso.OrderNotification.Hubs.OrderStatusHub".into()),
            process_delay: Duration::from_millis(pick!(process_delay_ms).unwrap_or(500)),
            status_ttl: Duration::from_secs(pick!(status_ttl).unwrap_or(86_400)),
            drain_file: pick!(drain_file).unwrap_or_else(|| "/tmp/draining".into()),
            shutdown_timeout: Duration::from_secs(pick!(shutdown_timeout).unwrap_or(25)),
            drain_spread: Duration::from_secs(pick!(drain_spread).unwrap_or(5)),
            dev_auth: pick!(dev_auth).unwrap_or(false),
            log_format: pick!(log_format).unwrap_or(LogFormat::Json),
            log_level: {
                let level = pick!(log_level).unwrap_or_else(|| "info".into());
                tracing_subscriber::EnvFilter::try_new(&level).map_err(|e| SettingsError::Invalid {
                    flag: "--log-level".into(),
                    env: "CONTOSO_LOG_LEVEL".into(),
                    message: e.to_string(),
                })?;
                level
            },
            otlp_endpoint: match pick!(otlp_endpoint).filter(|e| !e.is_empty()) {
                Some(e) if !(e.starts_with("http://") || e.starts_with("https://")) => {
                    return Err(SettingsError::Invalid {
                        flag: "--otlp-endpoint".into(),
                        env: "CONTOSO_OTLP_ENDPOINT".into(),
                        message: format!("{e:?} is not an http(s) URL"),
                    });
                }
                other => other,
            },
            prefetch: at_least!(prefetch, 32, 1),
            bus_prefix: pick!(bus_prefix).unwrap_or_default(),
            db_pool_size: at_least!(db_pool_size, 16, 1),
            outbox_poll: Duration::from_millis(at_least!(outbox_poll_ms, 500, 10)),
            delivery_limit: at_least!(delivery_limit, 10, 1),
            queue_type: pick!(queue_type).unwrap_or_default(),
            http_workers: pick!(http_workers),
            request_body_timeout: Duration::from_millis(at_least!(request_body_timeout_ms, 10_000, 10)),
            hub: crate::hub::HubSettings {
                keep_alive: Duration::from_millis(at_least!(keep_alive_interval_ms, 15_000, 10)),
                client_timeout: Duration::from_millis(at_least!(client_timeout_ms, 30_000, 10)),
                handshake_timeout: Duration::from_millis(at_least!(handshake_timeout_ms, 15_000, 10)),
                max_message_size: at_least!(max_message_size, 32 * 1024, 256),
                send_queue: at_least!(send_queue, 64, 1),
                negotiate_token_ttl: Duration::from_secs(60),
                max_connections: pick!(max_connections).unwrap_or(50_000),
                max_connections_per_user: pick!(max_connections_per_user).unwrap_or(32),
                close_on_token_expiry: pick!(close_on_token_expiry).unwrap_or(true),
                invocations_per_second: pick!(hub_invocations_per_second).unwrap_or(10),
                stateful_reconnect: match pick!(stateful_reconnect_window).unwrap_or(30) {
                    0 => None,
                    window => Some(crate::hub::resume::Limits {
                        window: Duration::from_secs(window),
                        max_bytes: at_least!(stateful_reconnect_buffer, 100_000, 1024),
                    }),
                },
            },
            orders_per_second_per_user: pick!(orders_per_second_per_user).unwrap_or(10),
            backplane_check_interval: match pick!(backplane_check_interval_ms).unwrap_or(5_000) {
                0 => None,
                _ => Some(Duration::from_millis(at_least!(backplane_check_interval_ms, 5_000, 10))),
            },
            negotiate_secret: pick!(negotiate_secret),
            retention: crate::cache::Retention {
                max_count: at_least!(notification_log_max, 1000, 1),
                max_age: Duration::from_secs(at_least!(notification_log_ttl, 86_400, 1)),
            },
            roles,
        };
        settings.check_required()?;
        Ok(settings)
    }

    /// Split roles need the real services; `all` falls back to embedded ones (CONTRACT §1).
    fn check_required(&self) -> Result<(), SettingsError> {
        if self.status_ttl.is_zero() {
            return Err(SettingsError::Invalid {
                flag: "--status-ttl".into(),
                env: "CONTOSO_STATUS_TTL".into(),
                message: "must be at least 1 second".into(),
            });
        }
        self.check_redis()?;
        for role in self.roles.iter() {
            let name = if self.roles.all { "all" } else { role.as_str() };
            let needs: &[(&Option<Secret>, &str, &str)] = match role {
                Role::Accept | Role::Process | Role::Notify => &[
                    (&self.database_url, "--database-url", "CONTOSO_DATABASE_URL"),
                    (&self.redis_url, "--redis-url", "CONTOSO_REDIS_URL"),
                    (&self.amqp_url, "--amqp-url", "CONTOSO_AMQP_URL"),
                ],
            };
            // `all` has an embedded stand-in for every missing URL (CONTRACT §1).
            for (value, flag, env) in needs {
                if value.is_none() && !self.roles.all {
                    return Err(missing(flag, env, name));
                }
            }
            let needs_auth = matches!(role, Role::Accept | Role::Notify);
            let keys = self.jwt.secret.is_some() || self.jwt.public_key.is_some() || self.jwt.jwks_url.is_some();
            if needs_auth && !keys && !self.dev_auth {
                return Err(missing(
                    "--jwt-secret, --jwt-public-key or --jwt-jwks-url",
                    "CONTOSO_JWT_SECRET, CONTOSO_JWT_PUBLIC_KEY or CONTOSO_JWT_JWKS_URL",
                    name,
                ));
            }
        }
        Ok(())
    }
}

impl Settings {
    /// A seed list needs cluster mode, and sharded pub/sub needs a cluster.
    fn check_redis(&self) -> Result<(), SettingsError> {
        let invalid =
            |flag: &str, env: &str, message: &str| SettingsError::Invalid { flag: flag.into(), env: env.into(), message: message.into() };
        let seeds = self.redis_url.as_ref().map_or(0, |u| crate::redis_client::seeds(u.expose()).len());
        if self.redis_mode == RedisMode::Standalone && seeds > 1 {
            return Err(invalid(
                "--redis-url",
                "CONTOSO_REDIS_URL",
                &format!("lists {seeds} addresses: a Redis Cluster needs --redis-mode cluster (CONTOSO_REDIS_MODE=cluster)"),
            ));
        }
        if self.redis_mode == RedisMode::Cluster && self.redis_url.is_none() {
            return Err(invalid("--redis-mode", "CONTOSO_REDIS_MODE", "cluster needs --redis-url with the cluster's seed nodes"));
        }
        if self.redis_mode == RedisMode::Standalone && self.backplane_pubsub == PubSub::Sharded {
            return Err(invalid("--backplane-pubsub", "CONTOSO_BACKPLANE_PUBSUB", "sharded needs --redis-mode cluster"));
        }
        Ok(())
    }
}

fn missing(flag: &str, env: &str, role: &str) -> SettingsError {
    SettingsError::Missing { flag: flag.into(), env: env.into(), role: role.into() }
}

fn read_file(path: &std::path::Path) -> Result<RawSettings, SettingsError> {
    let err = |message: String| SettingsError::File { path: path.display().to_string(), message };
    if !path.exists() {
        return Err(err("no such file".into()));
    }
    config::Config::builder()
        .add_source(config::File::from(path).format(config::FileFormat::Toml))
        .build()
        .and_then(|c| c.try_deserialize::<RawSettings>())
        .map_err(|e| err(e.to_string()))
}

#[cfg(test)]
mod tests;
