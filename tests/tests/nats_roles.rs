//! The NATS roles of the committed `nats.conf` (docs/SECURITY.md), against a real nats-server
//! running that very roles block: each forbidden action is refused by the server, and the
//! whole pipeline still serves images with every component logged in as its role. Also TLS:
//! the binaries' `--nats-tls-ca` connects to a TLS server, and without it they fail clearly.
//!
//! The `$JS.API...` subjects and the `imgfetch.reply.>` wildcard are written out as the roles
//! name them and as the server quotes them when it refuses.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use futures::StreamExt;
use imgfetch_common::connect::NatsAuth;
use imgfetch_common::message::{DeadLetter, FetchAnswer, RequestHead, Status};
use imgfetch_common::protocol::{
    dead_letter_subject, http_header, reply_subject, request_subject, stat_subject, DeadReason,
    ErrorCode, DEFAULT_DLQ_STREAM, DEFAULT_STREAM, FETCH_SUBJECT, GATEWAY_SERVICE,
    RESOLVER_SERVICE,
};
use imgfetch_common::provision::{self, ConsumerSettings, StreamSettings};
use imgfetch_tests::nats::{refused, NatsServer};
use imgfetch_tests::pipeline::{
    answer_status, ask, file_network, next_within, reply_head, resolver_config, samples_dir,
    Gateway, Resolver,
};
use imgfetch_tests::{init_logs, sample};
use tokio::sync::mpsc::UnboundedReceiver;

/// The gateway instance name the local `nats.conf` lets the gateway user listen under.
const GATEWAY_INSTANCE: &str = "local-gateway";

/// Publishes to `subject` with a reply inbox, and waits for the server to refuse it.
async fn publish_refused(
    client: &async_nats::Client,
    errors: &mut UnboundedReceiver<String>,
    subject: &str,
    inbox: &str,
) {
    client
        .publish_with_reply(subject.to_owned(), inbox.to_owned(), "".into())
        .await
        .unwrap();
    refused(
        errors,
        &format!("Permissions Violation for Publish to \"{subject}\""),
    )
    .await;
}

/// Creates the stream and the `harbor` consumer as the resolver role does when it starts.
async fn provision_harbor(nats: &NatsServer) -> async_nats::jetstream::consumer::PullConsumer {
    let (resolver, _) = nats.connect_as("resolver").await;
    let js = async_nats::jetstream::new(resolver);
    ensure_harbor(&js)
        .await
        .expect("the resolver role provisions the stream and its consumer")
}

/// Provisions network `harbor` with the default settings, as a resolver does at start.
async fn ensure_harbor(
    js: &async_nats::jetstream::Context,
) -> Result<async_nats::jetstream::consumer::PullConsumer, provision::ProvisionError> {
    provision::ensure_network(
        js,
        &StreamSettings::default(),
        &ConsumerSettings::default(),
        "harbor",
        true,
    )
    .await
}

/// A resolver of `harbor` and a gateway, each logged in as its role; the gateway as user
/// `gateway_user` with the instance name that user may listen under (`local-gateway` for the
/// local `gateway`, the user's own name for a Kubernetes replica such as
/// `imgfetch-gateway-0`). The resolver role may not ping, so the publisher's connection checks
/// that it serves.
async fn role_pipeline(
    nats: &NatsServer,
    publisher: &async_nats::Client,
    gateway_user: &str,
) -> (Resolver, Gateway) {
    let mut config = resolver_config(
        &nats.url(),
        vec![file_network("harbor", samples_dir().join("harbor"))],
    );
    config.nats_auth = nats.auth("resolver");
    let resolver = Resolver::start_pinging(config, publisher).await;
    let gateway_auth = nats.auth(gateway_user);
    let instance = match gateway_user {
        "gateway" => GATEWAY_INSTANCE.to_owned(),
        replica => replica.to_owned(),
    };
    let gateway = Gateway::start(&nats.url(), move |c| {
        c.nats_auth = gateway_auth;
        c.instance = instance;
        c.archive = None;
    })
    .await;
    (resolver, gateway)
}

/// The gateway role records results and reads them back: an image fetched without an archive
/// replays as `result_unavailable` (not `unknown_request`), an error with its own status.
async fn results_under_roles(gateway: &Gateway) {
    let client = reqwest::Client::new();
    let fetch = |path: &str, id: &str| {
        client
            .get(gateway.http(path))
            .header(http_header::REQUEST_ID, id)
            .send()
    };
    let r = fetch("/v1/images/harbor/quay-east.jpg", "roles-ok")
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = fetch("/v1/images/harbor/no-such.jpg", "roles-missing")
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    for (id, status, code) in [
        ("roles-ok", 410, "result_unavailable"),
        ("roles-missing", 404, "not_found"),
        ("roles-never", 404, "unknown_request"),
    ] {
        let r = reqwest::get(gateway.http(&format!("/v1/requests/{id}")))
            .await
            .unwrap();
        let got = r.status().as_u16();
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(
            (got, body["code"].as_str()),
            (status, Some(code)),
            "{id}: {body}"
        );
    }
}

#[tokio::test]
async fn anonymous_and_wrong_password_connections_are_refused() {
    init_logs();
    let nats = NatsServer::start_with_roles();
    let err = async_nats::connect(nats.url())
        .await
        .expect_err("an anonymous connection must be refused");
    eprintln!("anonymous: {err}");
    assert_eq!(
        err.kind(),
        async_nats::ConnectErrorKind::AuthorizationViolation,
        "anonymous: {err}"
    );
    let err = async_nats::ConnectOptions::new()
        .user_and_password("publisher".into(), "not-the-password".into())
        .connect(nats.url())
        .await
        .expect_err("a wrong password must be refused");
    assert_eq!(
        err.kind(),
        async_nats::ConnectErrorKind::AuthorizationViolation,
        "wrong password: {err}"
    );
}

#[tokio::test]
async fn the_publisher_cannot_delete_or_purge_the_stream() {
    init_logs();
    let nats = NatsServer::start_with_roles();
    provision_harbor(&nats).await;
    let (publisher, mut errors) = nats.connect_as("publisher").await;
    let inbox = publisher.new_inbox();
    let mut answers = publisher.subscribe(inbox.clone()).await.unwrap();
    for api in ["STREAM.DELETE", "STREAM.PURGE", "CONSUMER.DELETE"] {
        let subject = if api.starts_with("CONSUMER") {
            format!("$JS.API.{api}.IMGFETCH.imgfetch-harbor")
        } else {
            format!("$JS.API.{api}.IMGFETCH")
        };
        publish_refused(&publisher, &mut errors, &subject, &inbox).await;
    }
    // The stream and its consumer are still there, and JetStream never answered.
    let js = async_nats::jetstream::new(publisher.clone());
    let mut stream = js
        .get_stream(DEFAULT_STREAM)
        .await
        .expect("the stream survives");
    assert_eq!(stream.info().await.unwrap().state.consumer_count, 1);
    assert!(
        next_within(&mut answers, Duration::from_millis(200))
            .await
            .is_none(),
        "JetStream answered a refused management request"
    );
}

#[tokio::test]
async fn the_publisher_cannot_listen_to_gateway_replies() {
    init_logs();
    let nats = NatsServer::start_with_roles();
    let (publisher, mut errors) = nats.connect_as("publisher").await;
    let mut replies = publisher.subscribe("imgfetch.reply.>").await.unwrap();
    refused(
        &mut errors,
        "Permissions Violation for Subscription to \"imgfetch.reply.>\"",
    )
    .await;
    let mut marker = publisher.subscribe("me.marker").await.unwrap();
    publisher.flush().await.unwrap();
    // A resolver answers a gateway, then sends the publisher a marker: once the marker is
    // here, the answer would have been too, had the subscription been allowed.
    let (resolver, _) = nats.connect_as("resolver").await;
    resolver
        .publish(reply_subject(GATEWAY_INSTANCE, "x"), "secret".into())
        .await
        .unwrap();
    resolver.publish("me.marker", "".into()).await.unwrap();
    resolver.flush().await.unwrap();
    next_within(&mut marker, Duration::from_secs(5))
        .await
        .expect("the marker reaches the publisher");
    assert!(
        next_within(&mut replies, Duration::from_millis(100))
            .await
            .is_none(),
        "the publisher received a gateway's reply"
    );
}

#[tokio::test]
async fn the_publisher_cannot_publish_on_a_gateway_reply_subject() {
    init_logs();
    let nats = NatsServer::start_with_roles();
    let (gateway, _) = nats.connect_as("gateway").await;
    let subject = reply_subject(GATEWAY_INSTANCE, "forged");
    let mut replies = gateway.subscribe(subject.clone()).await.unwrap();
    gateway.flush().await.unwrap();
    let (publisher, mut errors) = nats.connect_as("publisher").await;
    publisher
        .publish(subject.clone(), "forged image".into())
        .await
        .unwrap();
    refused(
        &mut errors,
        &format!("Permissions Violation for Publish to \"{subject}\""),
    )
    .await;
    // The first message the gateway sees on that subject is the resolver's, sent after the
    // forgery was refused.
    let (resolver, _) = nats.connect_as("resolver").await;
    resolver
        .publish(subject.clone(), "real".into())
        .await
        .unwrap();
    resolver.flush().await.unwrap();
    let first = next_within(&mut replies, Duration::from_secs(5))
        .await
        .expect("the resolver's reply reaches the gateway");
    assert_eq!(first.payload.as_ref(), b"real", "the gateway got a forgery");
}

#[tokio::test]
async fn provisioning_without_the_right_to_create_is_an_error_with_its_cause_not_contention() {
    init_logs();
    let nats = NatsServer::start_with_roles();
    let (client, mut errors) = nats.connect_as("gateway").await;
    let mut js = async_nats::jetstream::new(client);
    js.set_timeout(Duration::from_secs(1));
    let err = ensure_harbor(&js)
        .await
        .expect_err("the gateway role may not create the stream");
    refused(&mut errors, "Permissions Violation").await;
    assert!(
        matches!(
            err,
            provision::ProvisionError::JetStream {
                action: "creating the stream",
                ..
            }
        ),
        "{err:?}"
    );
    let cause = std::error::Error::source(&err).expect("the cause is kept");
    assert!(cause.to_string().contains("timed out"), "{cause}");
}

#[tokio::test]
async fn the_gateway_role_cannot_pull_from_a_consumer() {
    init_logs();
    let nats = NatsServer::start_with_roles();
    let consumer = provision_harbor(&nats).await;
    let (publisher, _) = nats.connect_as("publisher").await;
    let headers = RequestHead {
        callback: Some("me.pull-1".into()),
        ..RequestHead::default()
    }
    .to_headers();
    async_nats::jetstream::new(publisher)
        .publish_with_headers(
            request_subject("harbor"),
            headers,
            r#"{"id":"pull-1","key":"quay-east.jpg"}"#.into(),
        )
        .await
        .unwrap()
        .await
        .expect("the publisher's request is stored");

    let (gateway, mut errors) = nats.connect_as("gateway").await;
    let inbox = gateway.new_inbox();
    let mut delivered = gateway.subscribe(inbox.clone()).await.unwrap();
    let subject = "$JS.API.CONSUMER.MSG.NEXT.IMGFETCH.imgfetch-harbor";
    gateway
        .publish_with_reply(subject, inbox, r#"{"batch":1,"expires":1000000000}"#.into())
        .await
        .unwrap();
    refused(
        &mut errors,
        &format!("Permissions Violation for Publish to \"{subject}\""),
    )
    .await;
    assert!(
        next_within(&mut delivered, Duration::from_millis(200))
            .await
            .is_none(),
        "the gateway pulled a request"
    );
    // The request is still there for the resolver role.
    let mut batch = consumer
        .fetch()
        .max_messages(1)
        .expires(Duration::from_secs(2))
        .messages()
        .await
        .unwrap();
    let msg = batch
        .next()
        .await
        .expect("the resolver pulls the request")
        .unwrap();
    assert!(String::from_utf8_lossy(&msg.payload).contains("pull-1"));
    msg.ack().await.expect("the resolver role may ack");
}

/// The publisher lists both services (`nats micro ls`) and fetches through `imgfetch.fetch`:
/// the roles let each side subscribe and answer what the micro protocol needs.
async fn service_under_roles(publisher: &async_nats::Client) {
    imgfetch_tests::eventually("both services listed", Duration::from_secs(10), || async {
        let inbox = publisher.new_inbox();
        let mut sub = publisher.subscribe(inbox.clone()).await.ok()?;
        publisher
            .publish_with_reply("$SRV.PING", inbox, "".into())
            .await
            .ok()?;
        let mut names = Vec::new();
        while names.len() < 2 {
            let msg = next_within(&mut sub, Duration::from_secs(1)).await?;
            let ping: serde_json::Value = serde_json::from_slice(&msg.payload).ok()?;
            names.push(ping["name"].as_str()?.to_owned());
        }
        names.sort();
        (names == [GATEWAY_SERVICE, RESOLVER_SERVICE]).then_some(())
    })
    .await;
    let ask = publisher.request(
        FETCH_SUBJECT,
        r#"{"network":"harbor","key":"quay-east.jpg"}"#.into(),
    );
    let answer = tokio::time::timeout(Duration::from_secs(10), ask)
        .await
        .expect("an answer in time")
        .expect("an answer");
    let fetched = FetchAnswer::from_headers(answer.headers.as_ref()).expect("a fetch answer");
    assert_eq!(fetched.head.status, Status::Ok);
    assert_eq!(
        answer.payload.as_ref(),
        sample("harbor/quay-east.jpg").as_slice()
    );
    let ask = publisher.request(stat_subject("harbor"), r#"{"key":"quay-east.jpg"}"#.into());
    let stat = tokio::time::timeout(Duration::from_secs(10), ask)
        .await
        .expect("a stat answer in time")
        .expect("a stat answer");
    assert_eq!(answer_status(&stat), Status::Ok);
    let stat: serde_json::Value = serde_json::from_slice(&stat.payload).unwrap();
    assert_eq!(stat["size"], sample("harbor/quay-east.jpg").len());
}

#[tokio::test]
async fn the_whole_pipeline_serves_images_with_roles_on() {
    init_logs();
    let nats = NatsServer::start_with_roles();
    let (publisher, _) = nats.connect_as("publisher").await;
    let (resolver, gateway) = role_pipeline(&nats, &publisher, "gateway").await;

    // HTTP, through the gateway.
    let r = reqwest::get(gateway.http("/v1/images/harbor/cranes/crane-07.jpg"))
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.headers());
    let body = r.bytes().await.unwrap();
    assert_eq!(
        body.as_ref(),
        sample("harbor/cranes/crane-07.jpg").as_slice()
    );

    // By hand, as the publisher: the resolver answers under me.>, and the gateways' sentinel
    // answers a request no stream captured.
    let answer = ask(
        &publisher,
        &request_subject("harbor"),
        r#"{"id":"cli-1","key":"quay-east.jpg"}"#,
        "cli-1",
    )
    .await;
    assert_eq!(reply_head(&answer).status, Status::Ok);
    assert_eq!(
        answer.payload.as_ref(),
        sample("harbor/quay-east.jpg").as_slice()
    );
    let answer = ask(
        &publisher,
        &request_subject("atlantis"),
        r#"{"id":"cli-2","key":"x.jpg"}"#,
        "cli-2",
    )
    .await;
    assert_eq!(
        reply_head(&answer).status,
        Status::Error(ErrorCode::UnknownNetwork)
    );
    let ready = reqwest::get(gateway.http("/readyz")).await.unwrap();
    assert_eq!(ready.status(), 200, "the gateway role can read the stream");
    results_under_roles(&gateway).await;
    service_under_roles(&publisher).await;

    gateway.stop().await;
    resolver.stop().await;
    // Nothing either binary did was refused: the roles allow all they need.
    let log = nats.log();
    assert!(
        !log.contains("Violation"),
        "the server refused something during a normal run:\n{log}"
    );
}

#[tokio::test]
async fn the_kubernetes_roles_serve_the_pipeline_and_refuse_the_same() {
    init_logs();
    let nats = NatsServer::start_with_chart_roles();
    assert!(
        async_nats::connect(nats.url()).await.is_err(),
        "an anonymous connection must be refused"
    );
    let (publisher, mut errors) = nats.connect_as("publisher").await;
    // Each replica is a user of its own, named after its pod, and runs as that instance.
    let (resolver, gateway) = role_pipeline(&nats, &publisher, "imgfetch-gateway-0").await;
    let r = reqwest::get(gateway.http("/v1/images/harbor/quay-east.jpg"))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.bytes().await.unwrap().as_ref(),
        sample("harbor/quay-east.jpg").as_slice()
    );
    let answer = ask(
        &publisher,
        &request_subject("harbor"),
        r#"{"id":"k8s-1","key":"quay-east.jpg"}"#,
        "k8s-1",
    )
    .await;
    assert_eq!(reply_head(&answer).status, Status::Ok);
    results_under_roles(&gateway).await;
    service_under_roles(&publisher).await;
    gateway.stop().await;
    resolver.stop().await;
    let log = nats.log();
    assert!(
        !log.contains("Violation"),
        "the server refused something during a normal run:\n{log}"
    );

    publisher
        .publish("$JS.API.STREAM.DELETE.IMGFETCH", "".into())
        .await
        .unwrap();
    refused(
        &mut errors,
        "Permissions Violation for Publish to \"$JS.API.STREAM.DELETE.IMGFETCH\"",
    )
    .await;
    let _ = publisher.subscribe("imgfetch.reply.>").await.unwrap();
    refused(
        &mut errors,
        "Permissions Violation for Subscription to \"imgfetch.reply.>\"",
    )
    .await;
    let (gateway, mut errors) = nats.connect_as("imgfetch-gateway-0").await;
    gateway
        .publish(
            "$JS.API.CONSUMER.MSG.NEXT.IMGFETCH.imgfetch-harbor",
            "".into(),
        )
        .await
        .unwrap();
    refused(
        &mut errors,
        "Permissions Violation for Publish to \"$JS.API.CONSUMER.MSG.NEXT.IMGFETCH.imgfetch-harbor\"",
    )
    .await;
}

/// A CA and a server certificate for 127.0.0.1 and localhost, made with the openssl CLI.
fn make_certs(dir: &Path) {
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap_or_else(|e| panic!("cannot run openssl (install the openssl package): {e}"));
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];
    let mut ca = vec!["req", "-x509", "-nodes", "-days", "2"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-subj",
        "/CN=imgfetch test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    openssl(&ca);
    let mut csr = vec!["req", "-nodes"];
    csr.extend(ec);
    csr.extend([
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    ]);
    openssl(&csr);
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "server.ext",
        "-out",
        "server.pem",
    ]);
}

/// A nats-server that requires TLS, and the CA that signed its certificate.
fn tls_server(certs: &Path) -> NatsServer {
    make_certs(certs);
    NatsServer::start_with(&format!(
        "tls {{\n  cert_file: {:?}\n  key_file: {:?}\n}}\n",
        certs.join("server.pem"),
        certs.join("server.key")
    ))
}

#[tokio::test]
async fn resolver_and_gateway_connect_over_tls_with_the_ca() {
    init_logs();
    let certs = tempfile::tempdir().unwrap();
    let nats = tls_server(certs.path());
    let auth = NatsAuth {
        tls_ca: Some(certs.path().join("ca.pem")),
        ..NatsAuth::default()
    };
    let mut config = resolver_config(
        &nats.url(),
        vec![file_network("harbor", samples_dir().join("harbor"))],
    );
    config.nats_auth = auth.clone();
    let resolver = Resolver::start(config).await;
    let gateway = Gateway::start(&nats.url(), |c| {
        c.nats_auth = auth;
        c.archive = None;
    })
    .await;
    let r = reqwest::get(gateway.http("/v1/images/harbor/quay-east.jpg"))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.bytes().await.unwrap().as_ref(),
        sample("harbor/quay-east.jpg").as_slice()
    );
    gateway.stop().await;
    resolver.stop().await;
}

#[tokio::test]
async fn without_the_ca_a_tls_server_is_refused_clearly() {
    init_logs();
    let certs = tempfile::tempdir().unwrap();
    let nats = tls_server(certs.path());
    let config = resolver_config(
        &nats.url(),
        vec![file_network("harbor", samples_dir().join("harbor"))],
    );
    let err = Resolver::start_err(config).await.to_string();
    eprintln!("resolver without the CA: {err}");
    assert!(
        err.contains("cannot connect to NATS") && err.to_lowercase().contains("certificate"),
        "expected a connection error naming the certificate, got: {err}"
    );

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut config = imgfetch_gateway::Config::new(nats.url());
    config.archive = None;
    let run = imgfetch_gateway::run(listener, config, tokio_util::sync::CancellationToken::new());
    let err = tokio::time::timeout(Duration::from_secs(20), run)
        .await
        .expect("the gateway gives up at start")
        .expect_err("the gateway must not start without the CA")
        .to_string();
    eprintln!("gateway without the CA: {err}");
    assert!(
        err.contains("cannot connect to NATS") && err.to_lowercase().contains("certificate"),
        "expected a connection error naming the certificate, got: {err}"
    );
}

/// Dead letters with every party logged in as its role: the resolver role provisions the DLQ,
/// handles a request out of deliveries (reads and deletes the original, stores the copy), the
/// publisher hears `undeliverable` and reads the copy, and may not pull the advisories, delete
/// or purge dead letters.
async fn dead_letters_under_roles(nats: &NatsServer) {
    let (publisher, mut errors) = nats.connect_as("publisher").await;
    let mut config = resolver_config(
        &nats.url(),
        vec![file_network("harbor", samples_dir().join("harbor"))],
    );
    config.nats_auth = nats.auth("resolver");
    let resolver = Resolver::start_pinging(config, &publisher).await;
    // A resolver of `stuck` that takes its requests and never settles them.
    let (stuck, _) = nats.connect_as("resolver").await;
    let consumer = provision::ensure_network(
        &async_nats::jetstream::new(stuck),
        &StreamSettings::default(),
        &ConsumerSettings {
            ack_wait: Duration::from_secs(1),
            max_deliver: 2,
            ..ConsumerSettings::default()
        },
        "stuck",
        true,
    )
    .await
    .expect("the resolver role provisions the stuck network");
    let (_, stop) = imgfetch_tests::fake::never_settle(consumer);

    // Out of deliveries about 2 s after it is queued.
    let answer = ask(
        &publisher,
        &request_subject("stuck"),
        r#"{"id":"dead-1","key":"quay-east.jpg"}"#,
        "dead-1",
    )
    .await;
    assert_eq!(
        reply_head(&answer).status,
        Status::Error(ErrorCode::Undeliverable)
    );
    stop.cancel();

    // The publisher reads the copy.
    let js = async_nats::jetstream::new(publisher.clone());
    let dlq = js
        .get_stream(DEFAULT_DLQ_STREAM)
        .await
        .expect("the publisher reads the DLQ's info");
    let copy = dlq
        .get_last_raw_message_by_subject(&dead_letter_subject("stuck"))
        .await
        .expect("the publisher reads a dead letter");
    assert_eq!(
        DeadLetter::from_headers(Some(&copy.headers)).map(|l| l.reason),
        Ok(DeadReason::MaxDeliveries)
    );
    // The original left the work queue, deleted by the resolver role.
    imgfetch_tests::eventually("the original deleted", Duration::from_secs(10), || {
        let js = js.clone();
        async move {
            let mut requests = js.get_stream(DEFAULT_STREAM).await.ok()?;
            (requests.info().await.ok()?.state.messages == 0).then_some(())
        }
    })
    .await;
    resolver.stop().await;
    let log = nats.log();
    assert!(
        !log.contains("Violation"),
        "the server refused something the dead letters needed:\n{log}"
    );

    let inbox = publisher.new_inbox();
    for subject in [
        "$JS.API.CONSUMER.MSG.NEXT.IMGFETCH_DLQ.imgfetch-dead-letters",
        "$JS.API.STREAM.MSG.DELETE.IMGFETCH_DLQ",
        "$JS.API.STREAM.PURGE.IMGFETCH_DLQ",
        "$JS.API.CONSUMER.CREATE.IMGFETCH_DLQ.imgfetch-dead-letters",
    ] {
        publish_refused(&publisher, &mut errors, subject, &inbox).await;
    }
}

#[tokio::test]
async fn dead_letters_work_under_the_local_roles() {
    init_logs();
    dead_letters_under_roles(&NatsServer::start_with_roles()).await;
}

#[tokio::test]
async fn dead_letters_work_under_the_kubernetes_roles() {
    init_logs();
    dead_letters_under_roles(&NatsServer::start_with_chart_roles()).await;
}
