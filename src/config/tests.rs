use super::*;

fn base() -> Vec<&'static str> {
    vec!["contoso", "--database-url", "postgres://x", "--redis-url", "redis://x", "--amqp-url", "amqp://x", "--jwt-secret", "s"]
}

#[test]
fn unknown_role_lists_the_valid_ones() {
    let err = "accept,frobnicate".parse::<RoleSet>().unwrap_err();
    assert_eq!(err, "unknown role 'frobnicate': valid roles are accept, process, notify, all");
}

#[test]
fn comma_lists_and_all_parse() {
    let set: RoleSet = "accept,notify".parse().unwrap();
    assert!(set.contains(Role::Accept) && set.contains(Role::Notify) && !set.contains(Role::Process));
    let all: RoleSet = "all".parse().unwrap();
    assert!(all.all && Role::ALL.iter().all(|r| all.contains(*r)));
}

#[test]
fn missing_database_url_names_flag_variable_and_role() {
    let err = Settings::try_from_args(["contoso", "--role", "accept", "--jwt-secret", "s"]).unwrap_err();
    assert_eq!(err.to_string(), "missing --database-url (CONTOSO_DATABASE_URL), required by role accept");
}

#[test]
fn defaults_apply_when_nothing_is_given() {
    let mut args = base();
    args.extend(["--role", "accept"]);
    let s = Settings::try_from_args(args).unwrap();
    assert_eq!(s.listen.to_string(), "0.0.0.0:8080");
    assert_eq!(s.channel_prefix, "contoso-signalr");
    assert_eq!(s.status_ttl, Duration::from_secs(86_400));
    assert_eq!(s.shutdown_timeout, Duration::from_secs(25));
    assert!(!s.dev_auth);
    assert_eq!(s.prefetch, 32);
}

#[test]
fn secrets_never_show_in_debug_output() {
    let mut args = base();
    args.extend(["--role", "accept"]);
    let s = Settings::try_from_args(args).unwrap();
    let shown = format!("{s:?}");
    assert!(!shown.contains("postgres://x"), "{shown}");
    assert!(shown.contains("Secret(***)"));
}

#[test]
fn file_values_apply_below_flags() {
    let dir = std::env::temp_dir().join(format!("contoso-cfg-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("contoso.toml");
    std::fs::write(&path, "role = \"accept\"\nstatus_ttl = 60\nchannel_prefix = \"from-file\"\n").unwrap();
    let mut args = base();
    args.extend(["--config", path.to_str().unwrap(), "--channel-prefix", "from-flag"]);
    let s = Settings::try_from_args(args).unwrap();
    assert_eq!(s.status_ttl, Duration::from_secs(60));
    assert_eq!(s.channel_prefix, "from-flag");
    assert!(s.roles.contains(Role::Accept));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn unknown_keys_in_the_file_are_an_error() {
    let dir = std::env::temp_dir().join(format!("contoso-cfg-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("contoso.toml");
    std::fs::write(&path, "role = \"accept\"\nstatus_tll = 60\n").unwrap();
    let mut args = base();
    args.extend(["--config", path.to_str().unwrap()]);
    let err = Settings::try_from_args(args).unwrap_err().to_string();
    assert!(err.contains("status_tll"), "{err}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn dev_auth_flag_without_value_means_on() {
    let mut args = base();
    args.extend(["--role", "accept", "--dev-auth"]);
    assert!(Settings::try_from_args(args).unwrap().dev_auth);
}

#[test]
fn role_all_falls_back_to_the_embedded_services() {
    let s = Settings::try_from_args(["contoso", "--role", "all", "--dev-auth"]).unwrap();
    assert_eq!(s.database_url.as_ref().map(|u| u.expose()), Some(EMBEDDED_DATABASE_URL));
    assert!(s.redis_url.is_none() && s.amqp_url.is_none(), "in-process cache, log, backplane and bus");
    let err = Settings::try_from_args(["contoso", "--role", "all"]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "missing --jwt-secret, --jwt-public-key or --jwt-jwks-url (CONTOSO_JWT_SECRET, CONTOSO_JWT_PUBLIC_KEY or CONTOSO_JWT_JWKS_URL), required by role all"
    );
}

#[test]
fn split_roles_still_need_the_real_services() {
    let err =
        Settings::try_from_args(["contoso", "--role", "notify", "--jwt-secret", "s", "--database-url", "postgres://x/y"]).unwrap_err();
    assert_eq!(err.to_string(), "missing --redis-url (CONTOSO_REDIS_URL), required by role notify");
    let err = Settings::try_from_args(["contoso", "--role", "accept,process", "--jwt-secret", "s"]).unwrap_err();
    assert!(err.to_string().starts_with("missing --database-url"), "{err}");
}

#[test]
fn a_value_below_its_minimum_is_refused_naming_flag_and_variable() {
    let err = Settings::try_from_args(["contoso", "--role", "all", "--keep-alive-interval-ms", "5"]).unwrap_err().to_string();
    assert_eq!(err, "invalid --keep-alive-interval-ms (CONTOSO_KEEP_ALIVE_INTERVAL_MS): 5 is below the minimum of 10");
    let err = Settings::try_from_args(["contoso", "--role", "all", "--prefetch", "0"]).unwrap_err().to_string();
    assert!(err.starts_with("invalid --prefetch (CONTOSO_PREFETCH)"), "{err}");
    assert_eq!(
        Settings::try_from_args(["contoso", "--role", "all", "--jwt-secret", "s", "--prefetch", "1"]).unwrap().prefetch,
        1,
        "the minimum itself is fine"
    );
    // 0 switches the self-check off; anything else must be a sensible interval.
    assert!(
        Settings::try_from_args(["contoso", "--role", "all", "--jwt-secret", "s", "--backplane-check-interval-ms", "0"])
            .unwrap()
            .backplane_check_interval
            .is_none()
    );
    assert!(Settings::try_from_args(["contoso", "--role", "all", "--backplane-check-interval-ms", "3"]).is_err());
}

#[test]
fn an_invalid_log_level_is_refused() {
    let err = Settings::try_from_args(["contoso", "--role", "all", "--log-level", "info,contoso=loud"]).unwrap_err().to_string();
    assert!(err.starts_with("invalid --log-level (CONTOSO_LOG_LEVEL)"), "{err}");
    assert!(Settings::try_from_args(["contoso", "--role", "all", "--jwt-secret", "s", "--log-level", "info,contoso=debug"]).is_ok());
}

#[test]
fn an_otlp_endpoint_that_is_not_http_is_refused() {
    let mut args = base();
    args.extend(["--role", "accept", "--otlp-endpoint", "collector:4318"]);
    let err = Settings::try_from_args(args).unwrap_err().to_string();
    assert!(err.starts_with("invalid --otlp-endpoint (CONTOSO_OTLP_ENDPOINT)"), "{err}");
    let mut args = base();
    args.extend(["--role", "accept", "--otlp-endpoint", "http://collector:4318"]);
    assert_eq!(Settings::try_from_args(args).unwrap().otlp_endpoint.as_deref(), Some("http://collector:4318"));
}

#[test]
fn redis_defaults_to_one_server_with_classic_pub_sub_and_a_cluster_to_sharded() {
    let mut args = base();
    args.extend(["--role", "notify"]);
    let s = Settings::try_from_args(args.clone()).unwrap();
    assert_eq!((s.redis_mode, s.backplane_pubsub), (RedisMode::Standalone, PubSub::Classic));
    args.extend(["--redis-mode", "cluster"]);
    let s = Settings::try_from_args(args.clone()).unwrap();
    assert_eq!((s.redis_mode, s.backplane_pubsub), (RedisMode::Cluster, PubSub::Sharded));
    args.extend(["--backplane-pubsub", "classic"]);
    assert_eq!(Settings::try_from_args(args).unwrap().backplane_pubsub, PubSub::Classic, "classic stays possible on a cluster");
}

#[test]
fn a_seed_list_without_cluster_mode_and_sharded_pub_sub_on_one_server_are_refused() {
    let args = ["contoso", "--role", "notify", "--database-url", "postgres://x", "--amqp-url", "amqp://x", "--jwt-secret", "s"];
    let seeds = [&args[..], &["--redis-url", "redis://a:6379,redis://b:6379"]].concat();
    assert_eq!(
        Settings::try_from_args(seeds).unwrap_err().to_string(),
        "invalid --redis-url (CONTOSO_REDIS_URL): lists 2 addresses: a Redis Cluster needs --redis-mode cluster (CONTOSO_REDIS_MODE=cluster)"
    );
    let sharded = [&args[..], &["--redis-url", "redis://a:6379", "--backplane-pubsub", "sharded"]].concat();
    assert_eq!(
        Settings::try_from_args(sharded).unwrap_err().to_string(),
        "invalid --backplane-pubsub (CONTOSO_BACKPLANE_PUBSUB): sharded needs --redis-mode cluster"
    );
}

#[test]
fn queues_are_quorum_queues_unless_classic_is_asked_for() {
    let mut args = base();
    args.extend(["--role", "process"]);
    assert_eq!(Settings::try_from_args(args.clone()).unwrap().queue_type, QueueType::Quorum);
    args.extend(["--queue-type", "classic"]);
    assert_eq!(Settings::try_from_args(args).unwrap().queue_type, QueueType::Classic);
}
