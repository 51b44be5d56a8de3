//! Where the real services are: TEST_* variables, else this machine's defaults.

pub fn database_admin_url() -> String {
    std::env::var("TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://root@127.0.0.1:5432/postgres".into())
}

pub fn redis_url() -> String {
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into())
}

/// Seed nodes of the local Redis Cluster (scripts/services.sh starts it), comma-separated.
pub fn redis_cluster_urls() -> String {
    std::env::var("TEST_REDIS_CLUSTER_URLS")
        .unwrap_or_else(|_| "redis://127.0.0.1:7301,redis://127.0.0.1:7302,redis://127.0.0.1:7303".into())
}

pub fn amqp_url() -> String {
    std::env::var("TEST_AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// The admin URL with another database name.
pub fn database_url(db: &str) -> String {
    let admin = database_admin_url();
    let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(&admin);
    format!("{base}/{db}")
}

/// host:port of a URL such as postgres://user@host:port/db (for the chaos proxy).
pub fn host_port(url: &str) -> String {
    let after_scheme = url.split("://").nth(1).expect("url has a scheme");
    let authority = after_scheme.split('/').next().unwrap();
    authority.rsplit('@').next().unwrap().to_owned()
}

/// The same URL with host:port replaced (to route a dependency through a proxy).
pub fn with_host_port(url: &str, new: &str) -> String {
    url.replacen(&host_port(url), new, 1)
}
