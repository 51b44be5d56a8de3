//! Settings: every setting is a flag, a `CONTOSO_*` variable and a key of the optional
//! `--config` TOML file, merged flag > environment > file > default (CONTRACT §1).
//! `Settings::load` is the only place that reads the environment or the file.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::Parser;

pub use crate::{
    backplane::cluster::PubSub, bus::QueueType, http::auth::JwtSettings, redis_client::RedisMode, secret::Secret, telemetry::LogFormat,
};

/// Where `--role all` keeps its orders when no `--database-url` is given.
pub const EMBEDDED_DATABASE_URL: &str = "sqlite://contoso.db";

mod flags;
mod roles;
pub use flags::RawSettings;
pub use roles::{Role, RoleSet};

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
