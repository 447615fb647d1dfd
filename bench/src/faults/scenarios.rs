//! The faults, one function each: set the system up, start the load, do the fault for real,
//! stop the load, ask again by id for what has no image, and count.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use super::client::{self, Images, Load, LoadSpec};
use super::ledger::{FaultReport, Ledger};
use super::servers::{NatsNode, S3Node, Tmpfs, HUB_DOMAIN};
use super::stack::{self, Stack, StackSpec, Store};
use super::Fault;
use imgfetch_tests::latency::LatencyProxy;

/// The consumer's ack wait in every run: a killed resolver's requests come back this soon.
const ACK_WAIT: Duration = Duration::from_secs(2);

/// What every scenario shares: the binaries, the images, the scale.
pub struct Env {
    /// Where `imgfetch-gateway` and `imgfetch-resolver` are.
    pub bin_dir: PathBuf,
    /// The images, in a directory.
    pub corpus: crate::corpus::Corpus,
    /// Their SHA-256 by key.
    pub images: Arc<Images>,
    /// The short version.
    pub smoke: bool,
    /// Where each run's logs go (a directory per fault).
    pub log_root: PathBuf,
}

impl Env {
    /// `full` seconds in the full suite, `smoke` in the smoke version.
    fn secs(&self, full: f64, smoke: f64) -> Duration {
        Duration::from_secs_f64(if self.smoke { smoke } else { full })
    }

    fn load(&self, fault: Fault) -> LoadSpec {
        LoadSpec {
            networks: vec!["yard".to_owned()],
            token: None,
            clients: if self.smoke { 4 } else { 8 },
            interval: Duration::from_millis(100),
            max_in_flight: 16,
            // The gateway's deadline (20 s, below) and some margin.
            drain: Duration::from_secs(30),
            prefix: format!("{}-{}", fault.name(), crate::load::unique()),
        }
    }

    fn log_dir(&self, fault: Fault) -> anyhow::Result<PathBuf> {
        let dir = self.log_root.join(fault.name());
        std::fs::create_dir_all(&dir)?;
        Ok(dir)
    }

    /// The resolver's flags for a short ack wait and `replicas` stream replicas; on a cluster,
    /// first waits until its JetStream can create streams.
    async fn ack_wait_args(&self, nats_url: &str, replicas: usize) -> anyhow::Result<Vec<String>> {
        if replicas > 1 {
            stack::wait_jetstream(nats_url).await?;
        }
        Ok(vec![
            "--ack-wait".to_owned(),
            format!("{}ms", ACK_WAIT.as_millis()),
            "--stream-replicas".to_owned(),
            replicas.to_string(),
        ])
    }

    fn spec(
        &self,
        fault: Fault,
        nats_url: &str,
        store: Store,
        resolver_args: Vec<String>,
    ) -> anyhow::Result<StackSpec> {
        let mut resolver_args = resolver_args;
        // Retries that outlast a 10 s store outage: waits of 1, 2, 4, 8, 8… s.
        resolver_args.extend(["--store-attempts", "8", "--retry-delay", "1s"].map(String::from));
        Ok(StackSpec {
            bin_dir: self.bin_dir.clone(),
            log_dir: self.log_dir(fault)?,
            nats_url: nats_url.to_owned(),
            resolver_nats_url: None,
            network: "yard".to_owned(),
            store,
            resolver_args,
            gateway_args: vec!["--request-timeout".to_owned(), "20s".to_owned()],
            archive: None,
        })
    }
}

/// A run in progress: its load, its ledger, and the fault events recovery is measured from.
struct Run {
    fault: Fault,
    ledger: Arc<Ledger>,
    load: Load,
    events: Vec<(String, Instant)>,
    failures: Vec<String>,
    started: Instant,
}

impl Run {
    fn start(env: &Env, fault: Fault, stack: &Stack) -> Run {
        let ledger = Arc::new(Ledger::default());
        let load = Load::start(
            &env.load(fault),
            stack.bases.clone(),
            env.images.clone(),
            ledger.clone(),
        );
        Run {
            fault,
            ledger,
            load,
            events: Vec::new(),
            failures: Vec::new(),
            started: Instant::now(),
        }
    }

    fn event(&mut self, what: impl Into<String>) {
        self.events.push((what.into(), Instant::now()));
    }

    /// Stops the load, asks `reask_base` again for what has no image, and counts.
    async fn finish(self, env: &Env, reask_base: &str) -> FaultReport {
        self.load.finish().await;
        client::reask(&[reask_base.to_owned()], None, &env.images, &self.ledger).await;
        let mut report =
            self.ledger
                .report(self.fault.name(), &self.events, self.started.elapsed());
        report.failures.extend(self.failures);
        report
    }
}

async fn pause(d: Duration) {
    tokio::time::sleep(d).await;
}

/// Runs one fault.
pub async fn run(env: &Env, fault: Fault) -> anyhow::Result<FaultReport> {
    match fault {
        Fault::ResolverKill => resolver_kill(env).await,
        Fault::NatsRestart => nats_restart(env).await,
        Fault::StreamDelete => stream_delete(env).await,
        Fault::DirOutage => dir_outage(env).await,
        Fault::S3Outage => s3_outage(env).await,
        Fault::RollingRestart => rolling_restart(env).await,
        Fault::GatewayKill => gateway_kill(env).await,
        Fault::ArchiveFull => archive_full(env).await,
        Fault::ClusterLeader => cluster_leader(env).await,
        Fault::LeafRestart => leaf_restart(env).await,
        Fault::LeafLinkCut => leaf_link_cut(env).await,
        Fault::LeafHubLeader => leaf_hub_leader(env).await,
    }
}

/// A stack whose gateway is on the hub (`hub_urls`) and whose two resolvers are behind the
/// leaf node at `leaf_url`, reaching the hub's stream through its JetStream domain as zone
/// `yard`, with a short ack wait and `replicas` stream replicas.
async fn behind_leaf(
    env: &Env,
    fault: Fault,
    hub_urls: &str,
    leaf_url: &str,
    replicas: usize,
) -> anyhow::Result<Stack> {
    let first = hub_urls.split(',').next().unwrap_or(hub_urls);
    let mut args = env.ack_wait_args(first, replicas).await?;
    args.extend(
        ["--jetstream-domain", HUB_DOMAIN, "--zone", "yard"]
            .iter()
            .map(|s| s.to_string()),
    );
    let store = Store::Dir(env.corpus.root().to_path_buf());
    let mut spec = env.spec(fault, hub_urls, store, args)?;
    spec.resolver_nats_url = Some(leaf_url.to_owned());
    Stack::start(spec, 1, 2).await
}

/// The zone's leaf node stopped with SIGTERM and started again, then SIGKILLed and started
/// again: its resolvers lose their server, requests wait in the hub's stream.
async fn leaf_restart(env: &Env) -> anyhow::Result<FaultReport> {
    let fault = Fault::LeafRestart;
    let dir = temp()?;
    let hub = NatsNode::hub(dir.path(), 1)?.remove(0);
    let leaf_addr = hub.leaf_addr().context("a hub has a leafnode port")?;
    let mut leaf = NatsNode::leaf(
        dir.path(),
        "leaf-yard",
        &[format!("nats-leaf://{leaf_addr}")],
    )?;
    let stack = behind_leaf(env, fault, &hub.url(), &leaf.url(), 1).await?;
    restart_twice(env, fault, &stack, &mut leaf, "leaf node").await
}

/// The link between the zone's leaf node and the hub cut (a proxy in between closes every
/// connection and refuses new ones) and restored; both servers and all clients stay up, so
/// the resolvers notice only that their pulls go unanswered.
async fn leaf_link_cut(env: &Env) -> anyhow::Result<FaultReport> {
    let fault = Fault::LeafLinkCut;
    let dir = temp()?;
    let hub = NatsNode::hub(dir.path(), 1)?.remove(0);
    let leaf_addr = hub.leaf_addr().context("a hub has a leafnode port")?;
    let proxy = LatencyProxy::start(leaf_addr, Duration::ZERO).await?;
    let leaf = NatsNode::leaf(
        dir.path(),
        "leaf-yard",
        &[format!("nats-leaf://{}", proxy.addr)],
    )?;
    let stack = behind_leaf(env, fault, &hub.url(), &leaf.url(), 1).await?;
    let mut run = Run::start(env, fault, &stack);
    pause(env.secs(10.0, 3.0)).await;
    proxy.cut();
    pause(env.secs(10.0, 3.0)).await;
    proxy.restore();
    run.event("leaf link cut, restored");
    // A lost pull is noticed after its expiry and some slack (about 10 s).
    pause(env.secs(30.0, 15.0)).await;
    Ok(run.finish(env, &stack.base(0)).await)
}

/// A three-node hub with the stream R3 and the zone's leaf node attached to one node (able to
/// redial the others); the stream's leader SIGKILLed under load.
async fn leaf_hub_leader(env: &Env) -> anyhow::Result<FaultReport> {
    let fault = Fault::LeafHubLeader;
    let dir = temp()?;
    let mut nodes = NatsNode::hub(dir.path(), 3)?;
    let remotes = nodes
        .iter()
        .filter_map(|n| n.leaf_addr())
        .map(|a| format!("nats-leaf://{a}"))
        .collect::<Vec<_>>();
    let leaf = NatsNode::leaf(dir.path(), "leaf-yard", &remotes)?;
    let urls = nodes.iter().map(|n| n.url()).collect::<Vec<_>>().join(",");
    let stack = behind_leaf(env, fault, &urls, &leaf.url(), 3).await?;
    kill_stream_leader(env, fault, &stack, &mut nodes).await
}

/// One nats-server under `dir` and, on it, a stack of `gateways` gateways and two resolvers
/// with a short ack wait, serving `store` (default: the corpus's directory).
async fn on_one_node(
    env: &Env,
    fault: Fault,
    dir: &std::path::Path,
    store: Option<Store>,
    archive: Option<PathBuf>,
    gateways: usize,
) -> anyhow::Result<(NatsNode, Stack)> {
    let nats = NatsNode::single(dir)?;
    let args = env.ack_wait_args(&nats.url(), 1).await?;
    let store = store.unwrap_or_else(|| Store::Dir(env.corpus.root().to_path_buf()));
    let mut spec = env.spec(fault, &nats.url(), store, args)?;
    spec.archive = archive;
    let stack = Stack::start(spec, gateways, 2).await?;
    Ok((nats, stack))
}

fn temp() -> anyhow::Result<tempfile::TempDir> {
    Ok(tempfile::tempdir()?)
}

/// Two resolvers; every 2 s the oldest is SIGKILLed and a new one started at once.
async fn resolver_kill(env: &Env) -> anyhow::Result<FaultReport> {
    let fault = Fault::ResolverKill;
    let dir = temp()?;
    let (_nats, mut stack) = on_one_node(env, fault, dir.path(), None, None, 1).await?;
    let mut run = Run::start(env, fault, &stack);
    pause(Duration::from_secs(2)).await;
    let until = Instant::now() + env.secs(120.0, 10.0);
    let mut kills = 0;
    while Instant::now() < until {
        stack.kill_oldest_resolver();
        kills += 1;
        run.event(format!("SIGKILL resolver #{kills}"));
        stack.spawn_resolver()?;
        pause(Duration::from_secs(2)).await;
    }
    // Requests the last killed resolver held come back after the ack wait.
    pause(ACK_WAIT * 2).await;
    Ok(run.finish(env, &stack.base(0)).await)
}

/// nats-server stopped with SIGTERM and started again on the same port and store; then
/// SIGKILLed and started again.
async fn nats_restart(env: &Env) -> anyhow::Result<FaultReport> {
    let fault = Fault::NatsRestart;
    let dir = temp()?;
    let (mut nats, stack) = on_one_node(env, fault, dir.path(), None, None, 1).await?;
    restart_twice(env, fault, &stack, &mut nats, "nats-server").await
}

/// Under load on `stack`: `node` stopped with SIGTERM, down a while, started again on the same
/// port (and store); later SIGKILLed and started again.
async fn restart_twice(
    env: &Env,
    fault: Fault,
    stack: &Stack,
    node: &mut NatsNode,
    what: &str,
) -> anyhow::Result<FaultReport> {
    let mut run = Run::start(env, fault, stack);
    pause(env.secs(10.0, 3.0)).await;
    node.terminate();
    pause(env.secs(3.0, 2.0)).await;
    node.start()?;
    run.event(format!("{what} SIGTERM, started again"));
    pause(env.secs(20.0, 5.0)).await;
    node.kill();
    pause(env.secs(3.0, 2.0)).await;
    node.start()?;
    run.event(format!("{what} SIGKILL, started again"));
    pause(env.secs(20.0, 5.0)).await;
    Ok(run.finish(env, &stack.base(0)).await)
}

/// The stream deleted under load; the resolvers provision (no harness stream).
async fn stream_delete(env: &Env) -> anyhow::Result<FaultReport> {
    let fault = Fault::StreamDelete;
    let dir = temp()?;
    let nats = NatsNode::single(dir.path())?;
    let args = env.ack_wait_args(&nats.url(), 1).await?;
    let store = Store::Dir(env.corpus.root().to_path_buf());
    let stack = Stack::start(env.spec(fault, &nats.url(), store, args)?, 1, 2).await?;
    let mut run = Run::start(env, fault, &stack);
    pause(env.secs(10.0, 3.0)).await;
    let client = stack::connect(&nats.url()).await?;
    let js = async_nats::jetstream::new(client);
    tokio::time::timeout(
        Duration::from_secs(10),
        js.delete_stream(imgfetch_common::protocol::DEFAULT_STREAM),
    )
    .await
    .context("deleting the stream timed out")?
    .context("deleting the stream")?;
    run.event("stream deleted");
    pause(env.secs(40.0, 8.0)).await;
    Ok(run.finish(env, &stack.base(0)).await)
}

/// The directory store unreadable for a while: renamed away and a plain file put in its place,
/// so every read fails with "not a directory" (a store error, not a missing image), then put
/// back.
async fn dir_outage(env: &Env) -> anyhow::Result<FaultReport> {
    let fault = Fault::DirOutage;
    let dir = temp()?;
    let root = dir.path().join("store");
    let away = dir.path().join("store-away");
    copy_images(env, &root)?;
    let store = Some(Store::Dir(root.clone()));
    let (_nats, stack) = on_one_node(env, fault, dir.path(), store, None, 1).await?;
    let mut run = Run::start(env, fault, &stack);
    pause(env.secs(10.0, 3.0)).await;
    std::fs::rename(&root, &away)?;
    std::fs::write(&root, b"the store is out")?;
    pause(env.secs(10.0, 6.0)).await;
    std::fs::remove_file(&root)?;
    std::fs::rename(&away, &root)?;
    run.event("directory store back");
    pause(env.secs(20.0, 5.0)).await;
    Ok(run.finish(env, &stack.base(0)).await)
}

/// The S3 server stopped (SIGTERM) and started again on the same port and data directory.
async fn s3_outage(env: &Env) -> anyhow::Result<FaultReport> {
    let fault = Fault::S3Outage;
    let dir = temp()?;
    let mut s3 = S3Node::start_in(dir.path())?;
    copy_images(env, &s3.bucket_dir("yard"))?;
    let store = Some(Store::S3 {
        endpoint: s3.endpoint(),
        bucket: "yard".to_owned(),
    });
    let (_nats, stack) = on_one_node(env, fault, dir.path(), store, None, 1).await?;
    let mut run = Run::start(env, fault, &stack);
    pause(env.secs(10.0, 3.0)).await;
    s3.stop();
    pause(env.secs(10.0, 6.0)).await;
    s3.start()?;
    run.event("s3s-fs started again");
    pause(env.secs(20.0, 5.0)).await;
    Ok(run.finish(env, &stack.base(0)).await)
}

/// Two gateways and two resolvers, each replaced in turn: SIGTERM, a new one (a gateway on the
/// same port), ready, next.
async fn rolling_restart(env: &Env) -> anyhow::Result<FaultReport> {
    let fault = Fault::RollingRestart;
    let dir = temp()?;
    let (_nats, mut stack) = on_one_node(env, fault, dir.path(), None, None, 2).await?;
    let mut run = Run::start(env, fault, &stack);
    let step = env.secs(8.0, 2.0);
    pause(step).await;
    for i in 0..2 {
        if !stack.stop_gateway(i) {
            run.failures
                .push(format!("gateway {i} did not exit on SIGTERM within 40 s"));
        }
        stack.replace_gateway(i).await?;
        run.event(format!("gateway {i} replaced"));
        pause(step).await;
    }
    for i in 0..2 {
        if !stack.stop_oldest_resolver() {
            run.failures
                .push(format!("resolver {i} did not exit on SIGTERM within 30 s"));
        }
        stack.start_resolver().await?;
        run.event(format!("resolver {i} replaced"));
        pause(step).await;
    }
    Ok(run.finish(env, &stack.base(1)).await)
}

/// One of two gateways SIGKILLed with clients connected and requests in flight (the resolvers
/// frozen for a second before); its clients move to the other and ask for what they had
/// asked by id.
async fn gateway_kill(env: &Env) -> anyhow::Result<FaultReport> {
    let fault = Fault::GatewayKill;
    let dir = temp()?;
    let (_nats, mut stack) = on_one_node(env, fault, dir.path(), None, None, 2).await?;
    let mut run = Run::start(env, fault, &stack);
    pause(env.secs(10.0, 3.0)).await;
    // Answers take milliseconds: hold them back for a moment so that the killed gateway has
    // requests accepted and unanswered.
    stack.freeze_resolvers(true);
    pause(Duration::from_secs(1)).await;
    stack.kill_gateway(0);
    run.event("SIGKILL gateway 0");
    stack.freeze_resolvers(false);
    pause(env.secs(20.0, 5.0)).await;
    stack.replace_gateway(0).await?;
    pause(env.secs(3.0, 2.0)).await;
    Ok(run.finish(env, &stack.base(1)).await)
}

/// The gateway's archive on a 2 MiB tmpfs that fills within seconds: images must still be
/// answered, and the client told the copy failed.
async fn archive_full(env: &Env) -> anyhow::Result<FaultReport> {
    let fault = Fault::ArchiveFull;
    let dir = temp()?;
    let archive = dir.path().join("archive");
    let _disk = Tmpfs::mount(&archive, 2 * 1024 * 1024)?;
    let (_nats, stack) = on_one_node(env, fault, dir.path(), None, Some(archive), 1).await?;
    let run = Run::start(env, fault, &stack);
    pause(env.secs(60.0, 10.0)).await;
    let mut report = run.finish(env, &stack.base(0)).await;
    if report.archive_failed == 0 {
        report
            .failures
            .push("no client was told of an archive failure: the disk never filled".to_owned());
    }
    Ok(report)
}

/// Three nats-servers in a cluster, the stream R3; its leader SIGKILLed under load.
async fn cluster_leader(env: &Env) -> anyhow::Result<FaultReport> {
    let fault = Fault::ClusterLeader;
    let dir = temp()?;
    let mut nodes = NatsNode::cluster(dir.path(), 3)?;
    let args = env.ack_wait_args(&nodes[0].url(), 3).await?;
    // Both binaries get every node's URL, as in a real cluster deployment.
    let urls = nodes.iter().map(|n| n.url()).collect::<Vec<_>>().join(",");
    let store = Store::Dir(env.corpus.root().to_path_buf());
    let stack = Stack::start(env.spec(fault, &urls, store, args)?, 1, 2).await?;
    kill_stream_leader(env, fault, &stack, &mut nodes).await
}

/// Under load on `stack`: the stream's leader among `nodes` SIGKILLed; the report fails if no
/// other node leads the stream afterwards.
async fn kill_stream_leader(
    env: &Env,
    fault: Fault,
    stack: &Stack,
    nodes: &mut [NatsNode],
) -> anyhow::Result<FaultReport> {
    let leader = stream_leader(&nodes[0].url()).await?;
    let leader_at = nodes
        .iter()
        .position(|n| n.name == leader)
        .with_context(|| format!("the stream's leader {leader:?} is none of the nodes"))?;
    let mut run = Run::start(env, fault, stack);
    pause(env.secs(10.0, 3.0)).await;
    nodes[leader_at].kill();
    run.event(format!("SIGKILL stream leader {leader}"));
    pause(env.secs(40.0, 10.0)).await;
    let mut report = run.finish(env, &stack.base(0)).await;
    let other = nodes[(leader_at + 1) % nodes.len()].url();
    match stream_leader(&other).await {
        Ok(new) if new != leader => {}
        Ok(same) => report
            .failures
            .push(format!("the stream's leader is still {same}")),
        Err(e) => report
            .failures
            .push(format!("no stream leader after the kill: {e:#}")),
    }
    Ok(report)
}

/// The `server_name` of the stream's cluster leader.
async fn stream_leader(nats_url: &str) -> anyhow::Result<String> {
    let client = stack::connect(nats_url).await?;
    let js = async_nats::jetstream::new(client);
    for _ in 0..40 {
        let info = tokio::time::timeout(Duration::from_secs(5), async {
            let mut stream = js
                .get_stream(imgfetch_common::protocol::DEFAULT_STREAM)
                .await?;
            Ok::<_, anyhow::Error>(stream.info().await?.cluster.clone())
        })
        .await;
        if let Ok(Ok(Some(cluster))) = info {
            if let Some(leader) = cluster.leader {
                return Ok(leader);
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    anyhow::bail!("the stream has no leader after 10 s")
}

/// Copies the corpus's images under `root`, same keys.
fn copy_images(env: &Env, root: &std::path::Path) -> anyhow::Result<()> {
    for key in env.images.keys() {
        let to = root.join(key);
        std::fs::create_dir_all(to.parent().expect("keys have a directory"))?;
        std::fs::copy(env.corpus.root().join(key), to)?;
    }
    Ok(())
}
