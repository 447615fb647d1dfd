use super::*;
use clap::Parser;
use imgfetch_common::connect::NatsSettings;
use imgfetch_common::settings::{in_memory as files, FileError, SecretError};

fn no_env(_: &str) -> Option<String> {
    None
}

fn args(list: &[&str]) -> Args {
    Args::try_parse_from(std::iter::once("imgfetch-resolver").chain(list.iter().copied())).unwrap()
}

#[test]
fn flags_give_networks() {
    let c = Config::resolve(
        args(&[
            "--network",
            "a=file:///srv/a",
            "--network",
            "b=s3://bucket/pre/fix",
        ]),
        files(&[]),
        no_env,
    )
    .unwrap();
    assert_eq!(c.networks.len(), 2);
    assert_eq!(
        c.networks[0].store,
        StoreSpec::File {
            root: "/srv/a".into()
        }
    );
    match &c.networks[1].store {
        StoreSpec::S3 {
            bucket,
            prefix,
            options,
        } => {
            assert_eq!(bucket, "bucket");
            assert_eq!(prefix.as_deref(), Some("pre/fix"));
            assert!(options.from_env);
        }
        other => panic!("expected S3, got {other:?}"),
    }
    assert_eq!(c.nats_url, defaults::NATS_URL);
    assert!(c.provision);
}

#[test]
fn file_networks_carry_their_own_credentials_and_flags_override_the_file() {
    const FILE: &str = r#"
        nats_url = "nats://file:4222"
        stream_replicas = 3
        ack_wait = "2s"
        grace = "45s"
        dlq_max_age = "2d"
        log_format = "json"
        max_deliver = 3
        http_listen = "0.0.0.0:9090"
        nats_user = "resolver"
        nats_password_file = "/run/secrets/nats/password"
        nats_tls_ca = "/run/secrets/nats/ca.pem"
        concurrency = 3
        [networks.cams]
        url = "s3://cams"
        endpoint = "http://127.0.0.1:9000"
        access_key_id = "AK"
        secret_access_key_file = "/secret"
        session_token_file = "/token"
        allow_http = true
        [networks.dmz]
        url = "file:///srv/dmz"
    "#;
    let c = Config::resolve(
        args(&["--config", "/c.toml", "--concurrency", "5"]),
        files(&[("/c.toml", FILE), ("/secret", "SK\n"), ("/token", "ST")]),
        no_env,
    )
    .unwrap();
    assert_eq!(c.nats_url, "nats://file:4222");
    assert_eq!(c.concurrency, 5);
    assert_eq!(c.stream.replicas, 3);
    assert_eq!(c.consumer.ack_wait, Duration::from_secs(2));
    assert_eq!(c.grace, Duration::from_secs(45));
    assert_eq!(c.dead_letters.max_age, Duration::from_secs(2 * 86_400));
    assert_eq!(c.log_format, LogFormat::Json);
    assert_eq!(c.consumer.max_deliver, 3);
    assert_eq!(c.store_attempts, 3);
    assert_eq!(c.http_listen, Some(([0, 0, 0, 0], 9090).into()));
    assert_eq!(
        c.nats_auth,
        NatsAuth {
            creds_file: None,
            user: Some("resolver".into()),
            password_file: Some("/run/secrets/nats/password".into()),
            tls_ca: Some("/run/secrets/nats/ca.pem".into()),
        }
    );
    let cams = c.networks.iter().find(|n| n.name == "cams").unwrap();
    match &cams.store {
        StoreSpec::S3 { options, .. } => {
            assert_eq!(options.secret_access_key.as_deref(), Some("SK"));
            assert_eq!(options.session_token.as_deref(), Some("ST"));
            assert_eq!(options.allow_http, Some(true));
            assert!(!options.from_env);
        }
        other => panic!("expected S3, got {other:?}"),
    }
}

#[test]
fn bad_configs_are_one_clear_error() {
    let cases: &[(&[&str], &str)] = &[
        (&[], "no networks"),
        (&["--network", "a"], "expected NAME=URL"),
        (&["--network", "a=http://x"], "supported: file, s3"),
        (&["--network", "a.b=file:///x"], "not allowed"),
        (
            &["--network", "a=file:///x", "--network", "a=file:///y"],
            "twice",
        ),
        (&["--network", "a=s3://"], "no bucket"),
        (
            &["--network", "a=file:///x", "--log-format", "xml"],
            "invalid value 'xml'",
        ),
        (&["--config", "/missing.toml"], "cannot read"),
        (
            &["--network", "a=file:///x", "--dlq-stream", "IMGFETCH"],
            "must not be the request stream",
        ),
        (&["--network", "a=file:///x", "--zone", "a.b"], "zone: "),
        (
            &["--network", "a=file:///x", "--dead-letters-only"],
            "it serves no network",
        ),
        (
            &["--dead-letters-only", "--no-dead-letter-collector"],
            "it is the dead-letter collector",
        ),
        (
            &["--network", "a=file:///x", "--jetstream-domain", "hub.>"],
            "jetstream_domain: ",
        ),
        (
            &["--network", "a=file:///x", "--stream", "IMG.FETCH"],
            "stream name \"IMG.FETCH\" is not a valid JetStream name",
        ),
        (
            &["--network", "a=file:///x", "--dlq-stream", "dead letters"],
            "is not a valid JetStream name",
        ),
        (
            &["--network", "a=file:///x", "--dlq-max-age", "30m"],
            "dlq_max_age must be at least 1h",
        ),
        (
            &["--network", "a=file:///x", "--nats-user", "resolver"],
            "needs a password file",
        ),
        (
            &["--network", "a=file:///x", "--store-attempts", "11"],
            "store attempts must be 1 to 10",
        ),
        (
            &[
                "--network",
                "a=file:///x",
                "--max-deliver",
                "3",
                "--store-attempts",
                "4",
            ],
            "store attempts must be 1 to 3",
        ),
        (
            &["--network", "a=file:///x", "--stream-replicas", "6"],
            "stream replicas must be 1 to 5",
        ),
        (
            &["--network", "a=file:///x", "--ack-wait", "10ms"],
            "ack_wait must be at least 1s",
        ),
        (&["--network", "a=file:///x", "--ack-wait", "10"], "no unit"),
        (
            &["--network", "a=file:///x", "--stream-idle", "0s"],
            "stream_idle must be at least 1ms",
        ),
        (
            &[
                "--network",
                "a=file:///x",
                "--nats-url",
                "nats://a:4222,nats://",
            ],
            "bad NATS URL",
        ),
    ];
    for (list, expect) in cases {
        let parsed =
            Args::try_parse_from(std::iter::once("imgfetch-resolver").chain(list.iter().copied()));
        let err = match parsed {
            Ok(parsed) => Config::resolve(parsed, files(&[]), no_env)
                .unwrap_err()
                .to_string(),
            Err(clap) => clap.to_string(),
        };
        assert!(
            err.contains(expect),
            "{list:?}: expected {expect:?} in {err:?}"
        );
    }
}

#[test]
fn the_summary_lists_every_network_and_its_store() {
    const FILE: &str = r#"
        nats_url = "nats://nats:4222"
        provision = false
        http_listen = "0.0.0.0:9090"
        [networks.cams]
        url = "s3://camera-images"
        endpoint = "http://minio:9000"
        region = "us-east-1"
        access_key_id = "AK"
        secret_access_key = "SK-NOT-SHOWN"
        [networks.dmz]
        url = "file:///srv/images"
    "#;
    let c = Config::resolve(
        args(&["--config", "/c.toml"]),
        files(&[("/c.toml", FILE)]),
        no_env,
    )
    .unwrap();
    let line = c.summary();
    assert_eq!(
        line,
        "2 networks: cams=s3://camera-images (endpoint http://minio:9000, region \
         us-east-1), dmz=file:///srv/images; NATS nats://nats:4222; stream IMGFETCH \
         (verified only); health on 0.0.0.0:9090"
    );
    assert!(!line.contains("SK-NOT-SHOWN"));
}

#[test]
fn unknown_keys_in_the_file_are_errors() {
    const FILE: &str = "[networks.a]\nurl = \"file:///x\"\nendpiont = \"typo\"\n";
    let err = Config::resolve(
        args(&["--config", "/c.toml"]),
        files(&[("/c.toml", FILE)]),
        no_env,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("unknown field `endpiont`"), "{err}");
    const TOP: &str = "colour = 1\n";
    let err = Config::resolve(
        args(&["--config", "/c.toml"]),
        files(&[("/c.toml", TOP)]),
        no_env,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("unknown field `colour`"), "{err}");
    const OLD: &str = "ack_wait_ms = 2000\n";
    let err = Config::resolve(
        args(&["--config", "/c.toml"]),
        files(&[("/c.toml", OLD)]),
        no_env,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("/c.toml: line 1: unknown field `ack_wait_ms`")
            && err.ends_with("`ack_wait_ms` is now `ack_wait`, a duration in human form (e.g. ack_wait = \"30s\")"),
        "{err}"
    );
}

#[test]
fn flag_networks_read_the_s3_secret_from_its_file() {
    let env = |name: &str| (name == "AWS_SECRET_ACCESS_KEY_FILE").then(|| "/sk".to_owned());
    let c = Config::resolve(
        args(&["--network", "cams=s3://cams"]),
        files(&[("/sk", "SK\n")]),
        env,
    )
    .unwrap();
    match &c.networks[0].store {
        StoreSpec::S3 { options, .. } => {
            assert_eq!(options.secret_access_key.as_deref(), Some("SK"));
            assert!(options.from_env, "the rest still comes from AWS_*");
        }
        other => panic!("expected S3, got {other:?}"),
    }
    let err = Config::resolve(args(&["--network", "cams=s3://cams"]), files(&[]), env)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("AWS_SECRET_ACCESS_KEY_FILE: cannot read /sk"),
        "{err}"
    );
}

#[test]
fn a_flag_wins_over_the_file_and_the_file_over_the_default() {
    const FILE: &str = r#"
        nats_url = "nats://file:4222"
        nats_user = "file-user"
        nats_password_file = "/file/password"
        nats_tls_ca = "/file/ca.pem"
        instance = "from-file"
        concurrency = 3
        stream = "FILE"
        ack_wait = "2s"
        provision = true
        [networks.dmz]
        url = "file:///srv/dmz"
    "#;
    let c = Config::resolve(
        args(&[
            "--config",
            "/c.toml",
            "--instance",
            "from-flag",
            "--ack-wait",
            "5s",
            "--nats-creds",
            "/flag/x.creds",
            "--no-provision",
            "--network",
            "cams=file:///srv/cams",
        ]),
        files(&[("/c.toml", FILE)]),
        no_env,
    )
    .unwrap();
    assert_eq!(c.instance, "from-flag", "a flag wins over the file");
    assert_eq!(c.consumer.ack_wait, Duration::from_secs(5), "a flag wins");
    assert!(!c.provision, "--no-provision wins over provision = true");
    assert_eq!(c.concurrency, 3, "the file wins over the default");
    assert_eq!(c.stream.name, "FILE");
    assert_eq!(c.nats_url, "nats://file:4222");
    assert_eq!(c.max_streams, defaults::MAX_STREAMS, "the default, else");
    assert_eq!(c.grace, defaults::GRACE);
    // A creds file given by flag replaces the file's user and password, not only its fields.
    assert_eq!(
        c.nats_auth,
        NatsAuth {
            creds_file: Some("/flag/x.creds".into()),
            user: None,
            password_file: None,
            tls_ca: Some("/file/ca.pem".into()),
        }
    );
    // The networks add up: the file's tables, then the flags.
    let names: Vec<&str> = c.networks.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["dmz", "cams"]);
}

#[test]
fn settings_from_flags_and_variables_win_over_the_file_s() {
    // What clap gives from flags and variables alike (clap puts a flag over its variable).
    let given = Settings {
        nats: NatsSettings {
            nats_url: Some("nats://env:4222".into()),
            ..NatsSettings::default()
        },
        concurrency: Some(7),
        network: vec!["a=file:///a".into()],
        ..Settings::default()
    };
    let file = Settings {
        nats: NatsSettings {
            nats_url: Some("nats://file:4222".into()),
            nats_tls_ca: Some("/ca.pem".into()),
            ..NatsSettings::default()
        },
        concurrency: Some(3),
        max_streams: Some(9),
        provision: Some(false),
        ..Settings::default()
    };
    let s = given.or(file);
    assert_eq!(s.nats.nats_url.as_deref(), Some("nats://env:4222"));
    assert_eq!(s.nats.nats_tls_ca, Some("/ca.pem".into()));
    assert_eq!(s.concurrency, Some(7));
    assert_eq!(s.max_streams, Some(9));
    assert_eq!(s.provision, Some(false));
    assert_eq!(s.network, ["a=file:///a"]);
}

/// Whether an error of type `T` is in `err`'s chain of sources.
fn caused_by<T: std::error::Error + 'static>(err: &ConfigError) -> bool {
    let mut next = std::error::Error::source(err);
    while let Some(cause) = next {
        if cause.is::<T>() {
            return true;
        }
        next = cause.source();
    }
    false
}

#[test]
fn errors_are_typed_and_keep_their_source() {
    let err = |list: &[&str], read| Config::resolve(args(list), read, no_env).unwrap_err();
    let x = "a=file:///x";

    assert!(matches!(err(&[], files(&[])), ConfigError::NoNetworks));
    assert!(matches!(
        err(&["--network", "a"], files(&[])),
        ConfigError::NetworkFlag(arg) if arg == "a"
    ));
    assert!(matches!(
        err(&["--network", x, "--network", "a=file:///y"], files(&[])),
        ConfigError::NetworkTwice(name) if name == "a"
    ));
    let e = err(&["--network", "a.b=file:///x"], files(&[]));
    assert!(
        matches!(&e, ConfigError::NetworkName { network, .. } if network == "a.b"),
        "{e:?}"
    );
    let e = err(&["--network", "a=ftp://x"], files(&[]));
    let ConfigError::StoreUrl { network, source } = &e else {
        panic!("expected a bad store URL, got {e:?}");
    };
    assert_eq!((network.as_str(), source.url.as_str()), ("a", "ftp://x"));
    assert!(caused_by::<imgfetch_common::store::BadUrl>(&e), "{e:?}");
    assert!(matches!(
        err(&["--network", x, "--chunk-bytes", "10"], files(&[])),
        ConfigError::TooSmall {
            setting: "chunk bytes",
            least: "1024"
        }
    ));
    assert!(matches!(
        err(
            &[
                "--network",
                x,
                "--max-deliver",
                "3",
                "--store-attempts",
                "4"
            ],
            files(&[])
        ),
        ConfigError::StoreAttempts {
            attempts: 4,
            max_deliver: 3
        }
    ));
    assert!(matches!(
        err(&["--network", x, "--stream-replicas", "0"], files(&[])),
        ConfigError::StreamReplicas(0)
    ));
    assert!(matches!(
        err(&["--network", x, "--dlq-stream", "IMGFETCH"], files(&[])),
        ConfigError::DeadLetterStream
    ));
    assert!(matches!(
        err(&["--network", x, "--instance", "a b"], files(&[])),
        ConfigError::Instance(_)
    ));
    assert!(matches!(
        err(&["--network", x, "--nats-url", "nats://"], files(&[])),
        ConfigError::Nats(_)
    ));

    // The config file: an io::Error, then a toml error, each kept.
    let e = err(&["--config", "/none.toml"], files(&[]));
    assert!(
        matches!(&e, ConfigError::File(FileError::Read { .. })),
        "{e:?}"
    );
    assert!(caused_by::<std::io::Error>(&e), "{e:?}");
    let e = err(
        &["--config", "/c.toml"],
        files(&[("/c.toml", "concurrency = \"many\"\n")]),
    );
    assert!(matches!(&e, ConfigError::File(FileError::Toml(_))), "{e:?}");
    assert!(caused_by::<toml::de::Error>(&e), "{e:?}");

    // A network's secret file, and a file:// table with S3 settings.
    const TABLES: &str = "[networks.cams]\nurl = \"s3://cams\"\nsession_token_file = \"/st\"\n";
    let e = err(&["--config", "/c.toml"], files(&[("/c.toml", TABLES)]));
    let ConfigError::NetworkSecret { network, source } = &e else {
        panic!("expected a network secret error, got {e:?}");
    };
    assert_eq!(network, "cams");
    assert!(
        matches!(source, SecretError::Read { setting, .. } if setting == "session_token_file"),
        "{source:?}"
    );
    assert!(caused_by::<std::io::Error>(&e), "{e:?}");
    assert_eq!(
        e.to_string(),
        "network \"cams\": session_token_file: cannot read /st: no such file"
    );
    const FILE_S3: &str = "[networks.dmz]\nurl = \"file:///d\"\nregion = \"eu\"\n";
    assert!(matches!(
        err(&["--config", "/c.toml"], files(&[("/c.toml", FILE_S3)])),
        ConfigError::S3OptionsForFile(name) if name == "dmz"
    ));
}

#[test]
fn the_default_instance_is_the_host_name_and_a_random_suffix() {
    let a = Config::new(defaults::NATS_URL, Vec::new()).instance;
    let b = Config::new(defaults::NATS_URL, Vec::new()).instance;
    assert_ne!(a, b, "instances must differ by default");
    let (host, suffix) = a.rsplit_once('-').unwrap();
    assert!(!host.is_empty(), "{a}");
    assert!(
        suffix.len() == 8 && suffix.bytes().all(|b| b.is_ascii_hexdigit()),
        "{a}"
    );
    imgfetch_common::validate::id(&a).expect("the default is a valid instance name");
}

#[test]
fn a_leaf_zones_resolver_names_its_zone_and_the_hubs_domain() {
    let plain = Config::resolve(args(&["--network", "a=file:///x"]), files(&[]), no_env).unwrap();
    assert_eq!(plain.zone, None);
    assert_eq!(plain.jetstream_domain, None);
    assert!(plain.dead_letter_collector, "collected by default");

    let zone = Config::resolve(
        args(&[
            "--network",
            "a=file:///x",
            "--zone",
            "plant",
            "--jetstream-domain",
            "hub",
            "--no-dead-letter-collector",
            "--pull-ahead",
            "256",
        ]),
        files(&[]),
        no_env,
    )
    .unwrap();
    assert_eq!(zone.pull_ahead, 256);
    assert_eq!(plain.pull_ahead, 0, "nothing pulled ahead by default");
    assert!(
        !plain.pull_ahead_sized && !zone.pull_ahead_sized,
        "a count given is kept"
    );
    let sized = Config::resolve(
        args(&["--network", "a=file:///x", "--jetstream-domain", "hub"]),
        files(&[]),
        no_env,
    )
    .unwrap();
    assert!(
        sized.pull_ahead_sized,
        "behind a leaf node, sized to the link"
    );
    assert_eq!(sized.pull_ahead, 256, "from 256 until measured");
    assert_eq!(zone.zone.as_deref(), Some("plant"));
    assert_eq!(zone.jetstream_domain.as_deref(), Some("hub"));
    assert!(!zone.dead_letter_collector);
    assert!(zone
        .summary()
        .starts_with("zone plant, JetStream domain hub; "));
    assert!(zone.summary().contains("dead letters collected elsewhere"));

    // The same from the file; the flag still wins over `dead_letter_collector = true`.
    const FILE: &str = r#"
        zone = "plant"
        jetstream_domain = "hub"
        dead_letter_collector = false
        [networks.a]
        url = "file:///x"
    "#;
    let file = Config::resolve(
        args(&["--config", "/c.toml"]),
        files(&[("/c.toml", FILE)]),
        no_env,
    )
    .unwrap();
    assert_eq!(file.zone.as_deref(), Some("plant"));
    assert_eq!(
        file.pull_ahead,
        defaults::LEAF_PULL_AHEAD,
        "behind a leaf node, pulled ahead by default"
    );
    assert_eq!(file.jetstream_domain.as_deref(), Some("hub"));
    assert!(!file.dead_letter_collector);
    const COLLECTING: &str = r#"
        dead_letter_collector = true
        [networks.a]
        url = "file:///x"
    "#;
    let flag = Config::resolve(
        args(&["--config", "/c.toml", "--no-dead-letter-collector"]),
        files(&[("/c.toml", COLLECTING)]),
        no_env,
    )
    .unwrap();
    assert!(!flag.dead_letter_collector, "the flag wins");
}

#[test]
fn a_dead_letter_collector_serves_no_network() {
    let c = Config::resolve(args(&["--dead-letters-only"]), files(&[]), no_env).unwrap();
    assert!(c.networks.is_empty());
    assert!(c.dead_letter_collector);
    assert!(
        c.summary().starts_with("no network (dead letters only); "),
        "{}",
        c.summary()
    );
}
