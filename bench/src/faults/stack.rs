//! The imgfetch processes of a fault run: gateways on ports that survive their replacement,
//! resolvers started, killed and stopped one by one, and the stream provisioned up front when
//! the resolvers cannot be told a short ack wait.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;

use super::client::Gateways;
use super::servers::{free_port, S3_ACCESS_KEY, S3_SECRET_KEY};
use crate::procs::{wait_until, Proc};

/// What the processes log: warnings, and the binaries' own start and stop lines.
const LOG_FILTER: &str = "warn,imgfetch_resolver=info,imgfetch_gateway=info";

/// Where a network's images are.
#[derive(Clone, Debug)]
pub enum Store {
    /// A directory (`file://`).
    Dir(PathBuf),
    /// A bucket on an S3 server.
    S3 {
        /// `http://127.0.0.1:<port>`.
        endpoint: String,
        /// Bucket name.
        bucket: String,
    },
}

/// How to start the processes of a run.
#[derive(Clone, Debug)]
pub struct StackSpec {
    /// Where `imgfetch-gateway` and `imgfetch-resolver` are.
    pub bin_dir: PathBuf,
    /// Where logs (and the resolvers' config files) go.
    pub log_dir: PathBuf,
    /// The NATS URL(s) both binaries are given.
    pub nats_url: String,
    /// The resolvers' NATS URL instead, when they are behind a leaf node.
    pub resolver_nats_url: Option<String>,
    /// The one network served.
    pub network: String,
    /// Its store.
    pub store: Store,
    /// More resolver flags.
    pub resolver_args: Vec<String>,
    /// More gateway flags.
    pub gateway_args: Vec<String>,
    /// The gateways' archive directory; `None` for `--archive off`.
    pub archive: Option<PathBuf>,
}

struct Gateway {
    proc: Proc,
    port: u16,
}

/// The running gateways and resolvers.
pub struct Stack {
    spec: StackSpec,
    gateways: Vec<Gateway>,
    /// The live resolvers, oldest first.
    pub resolvers: Vec<Proc>,
    started: usize,
    /// The gateways' base URLs, in the order clients try them.
    pub bases: Gateways,
}

impl Stack {
    /// Starts `resolvers` resolvers, then `gateways` gateways, each ready before the next.
    pub async fn start(
        spec: StackSpec,
        gateways: usize,
        resolvers: usize,
    ) -> anyhow::Result<Stack> {
        let mut stack = Stack {
            spec,
            gateways: Vec::new(),
            resolvers: Vec::new(),
            started: 0,
            bases: Arc::new(Mutex::new(Vec::new())),
        };
        for _ in 0..resolvers {
            stack.start_resolver().await?;
        }
        for _ in 0..gateways {
            let port = free_port()?;
            let proc = stack.spawn_gateway(port).await?;
            stack.gateways.push(Gateway { proc, port });
            stack
                .bases
                .lock()
                .expect("gateway list")
                .push(format!("http://127.0.0.1:{port}"));
        }
        Ok(stack)
    }

    /// The base URL of gateway `i`.
    pub fn base(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.gateways[i].port)
    }

    /// Starts one more resolver without waiting for it, as a supervisor restarting a crashed
    /// one would.
    pub fn spawn_resolver(&mut self) -> anyhow::Result<()> {
        self.started += 1;
        let instance = format!("resolver-{}", self.started);
        let nats_url = self
            .spec
            .resolver_nats_url
            .as_ref()
            .unwrap_or(&self.spec.nats_url);
        let mut args = vec![
            "--nats-url".to_owned(),
            nats_url.clone(),
            "--instance".to_owned(),
            instance.clone(),
        ];
        match &self.spec.store {
            Store::Dir(dir) => {
                args.push("--network".to_owned());
                args.push(format!("{}=file://{}", self.spec.network, dir.display()));
            }
            Store::S3 { endpoint, bucket } => {
                let file = self.spec.log_dir.join("resolver-s3.toml");
                std::fs::write(
                    &file,
                    format!(
                        "[networks.{}]\nurl = \"s3://{bucket}\"\nendpoint = \"{endpoint}\"\nregion = \"us-east-1\"\naccess_key_id = \"{S3_ACCESS_KEY}\"\nsecret_access_key = \"{S3_SECRET_KEY}\"\nallow_http = true\n",
                        self.spec.network
                    ),
                )?;
                args.push("--config".to_owned());
                args.push(file.display().to_string());
            }
        }
        args.extend(self.spec.resolver_args.iter().cloned());
        let log = self.spec.log_dir.join(format!("{instance}.log"));
        let proc = Proc::spawn_logging(
            &self.spec.bin_dir.join("imgfetch-resolver"),
            &args,
            log,
            LOG_FILTER,
        )?;
        self.resolvers.push(proc);
        Ok(())
    }

    /// Starts one more resolver and waits until it says it is ready.
    pub async fn start_resolver(&mut self) -> anyhow::Result<()> {
        self.spawn_resolver()?;
        let proc = self.resolvers.last_mut().expect("just started");
        let log = proc.log_path().to_path_buf();
        wait_until("a resolver to be ready", proc, || {
            let log = log.clone();
            async move {
                std::fs::read_to_string(&log).is_ok_and(|text| text.contains("resolver ready"))
            }
        })
        .await
    }

    /// SIGKILLs the oldest resolver.
    pub fn kill_oldest_resolver(&mut self) {
        if !self.resolvers.is_empty() {
            self.resolvers.remove(0).kill();
        }
    }

    /// SIGTERMs the oldest resolver and waits for it to exit (its grace period, at most 30 s).
    pub fn stop_oldest_resolver(&mut self) -> bool {
        !self.resolvers.is_empty() && self.resolvers.remove(0).terminate(Duration::from_secs(30))
    }

    /// Freezes (SIGSTOP) or thaws (SIGCONT) every resolver: requests pile up accepted and
    /// unanswered, as behind a slow store.
    pub fn freeze_resolvers(&self, frozen: bool) {
        for resolver in &self.resolvers {
            resolver.signal(if frozen { "STOP" } else { "CONT" });
        }
    }

    /// SIGKILLs gateway `i`.
    pub fn kill_gateway(&mut self, i: usize) {
        self.gateways[i].proc.kill();
    }

    /// SIGTERMs gateway `i` and waits for it to exit (at most 40 s); whether it exited itself.
    pub fn stop_gateway(&mut self, i: usize) -> bool {
        self.gateways[i].proc.terminate(Duration::from_secs(40))
    }

    /// Starts a new gateway on gateway `i`'s port (its old process must be gone) and waits
    /// for `/readyz`.
    pub async fn replace_gateway(&mut self, i: usize) -> anyhow::Result<()> {
        let proc = self.spawn_gateway(self.gateways[i].port).await?;
        self.gateways[i].proc = proc;
        Ok(())
    }

    async fn spawn_gateway(&mut self, port: u16) -> anyhow::Result<Proc> {
        self.started += 1;
        let instance = format!("gateway-{}", self.started);
        let archive = match &self.spec.archive {
            Some(dir) => dir.display().to_string(),
            None => "off".to_owned(),
        };
        let mut args = vec![
            "--nats-url".to_owned(),
            self.spec.nats_url.clone(),
            "--listen".to_owned(),
            format!("127.0.0.1:{port}"),
            "--instance".to_owned(),
            instance.clone(),
            "--archive".to_owned(),
            archive,
        ];
        args.extend(self.spec.gateway_args.iter().cloned());
        let mut proc = Proc::spawn_logging(
            &self.spec.bin_dir.join("imgfetch-gateway"),
            &args,
            self.spec.log_dir.join(format!("{instance}.log")),
            LOG_FILTER,
        )?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()?;
        let readyz = format!("http://127.0.0.1:{port}/readyz");
        wait_until("a gateway to be ready", &mut proc, || {
            let request = http.get(&readyz).send();
            async move { request.await.is_ok_and(|r| r.status().is_success()) }
        })
        .await?;
        Ok(proc)
    }
}

/// Connects to NATS, giving up after 10 s.
pub async fn connect(nats_url: &str) -> anyhow::Result<async_nats::Client> {
    tokio::time::timeout(Duration::from_secs(10), async_nats::connect(nats_url))
        .await
        .context("connecting to NATS timed out")?
        .with_context(|| format!("cannot connect to {nats_url}"))
}

/// Waits until the JetStream of the server (or cluster) at `nats_url` answers: a new cluster
/// elects its JetStream leader first, and a resolver that cannot provision at start exits.
pub async fn wait_jetstream(nats_url: &str) -> anyhow::Result<()> {
    let client = connect(nats_url).await?;
    let js = async_nats::jetstream::new(client);
    let mut last = String::new();
    for _ in 0..120 {
        match tokio::time::timeout(Duration::from_secs(5), js.query_account()).await {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(e)) => last = e.to_string(),
            Err(_) => last = "timed out".to_owned(),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    anyhow::bail!("JetStream never answered: {last}")
}
