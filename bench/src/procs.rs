//! The processes under test: the resolver and gateway binaries started with the flags a user
//! would give them, killed on drop, and what `/proc` says about their CPU time and memory.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

/// CPU time and memory of one process, read from `/proc`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Usage {
    /// User plus system CPU time.
    pub cpu: Duration,
    /// Resident set now, bytes.
    pub rss: u64,
    /// Largest resident set so far, bytes.
    pub peak_rss: u64,
}

/// Reads the usage of process `pid` (`None` when it is gone or `/proc` is unreadable).
pub fn usage(pid: u32) -> Option<Usage> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces; fields after it are fixed.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, utime field 14, stime field 15 (1-based in proc(5)).
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    Some(Usage {
        cpu: Duration::from_millis(ticks * 1000 / clock_ticks()),
        rss: kib("VmRSS:"),
        peak_rss: kib("VmHWM:"),
    })
}

fn clock_ticks() -> u64 {
    // USER_HZ is 100 on every Linux this runs on; `getconf` says so without unsafe code.
    static HZ: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *HZ.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100)
    })
}

/// Where the `imgfetch-resolver` and `imgfetch-gateway` binaries are.
pub fn find_bin_dir(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    let dir = match given {
        Some(d) => d.to_path_buf(),
        None => std::env::current_exe()?
            .parent()
            .context("the benchmark binary has no directory")?
            .to_path_buf(),
    };
    for name in ["imgfetch-resolver", "imgfetch-gateway"] {
        if !dir.join(name).is_file() {
            bail!(
                "{} is missing; build the binaries first (cargo build --release --bins) or pass --bin-dir",
                dir.join(name).display()
            );
        }
    }
    Ok(dir)
}

/// Where the binaries are for a test of this crate: tests run from `target/<profile>/deps`, and
/// `cargo test` builds the workspace's binaries one level up.
pub fn test_bin_dir() -> PathBuf {
    std::env::current_exe()
        .expect("the test binary's path")
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps")
        .to_path_buf()
}

/// A child process killed on drop; its output goes to a log file.
pub struct Proc {
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn spawn(bin: &Path, args: &[String], log: PathBuf) -> anyhow::Result<Proc> {
        Proc::spawn_logging(bin, args, log, "warn")
    }

    /// Starts `bin` with `args`, its output appended to `log` (a restarted process keeps the
    /// log of the one before it), with `RUST_LOG` set to `filter`.
    pub fn spawn_logging(
        bin: &Path,
        args: &[String],
        log: PathBuf,
        filter: &str,
    ) -> anyhow::Result<Proc> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        let child = Command::new(bin)
            .args(args)
            .env("RUST_LOG", filter)
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        Ok(Proc { child, log })
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills it (SIGKILL) and reaps it, as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM, as an orchestrator stopping it would, and waits up to `grace` for it to
    /// exit; kills it after that. Returns whether it exited by itself.
    pub fn terminate(&mut self, grace: Duration) -> bool {
        if !matches!(self.child.try_wait(), Ok(None)) {
            return true;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let start = Instant::now();
        while start.elapsed() < grace {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
        false
    }

    /// Where its output goes.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Sends `signal` (a `kill` name such as `STOP` or `CONT`).
    pub fn signal(&self, signal: &str) {
        let _ = Command::new("kill")
            .args([&format!("-{signal}"), &self.pid().to_string()])
            .status();
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Its usage now.
    pub fn usage(&self) -> Usage {
        usage(self.pid()).unwrap_or_default()
    }

    /// An error with its log when it has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            bail!("process exited with {status}; its log:\n{log}");
        }
        Ok(())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A resolver and a gateway serving a set of networks, all on one NATS server.
pub struct Pipeline {
    /// The resolver.
    pub resolver: Proc,
    /// The gateway.
    pub gateway: Proc,
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    _archive: Option<tempfile::TempDir>,
    resolver_bin: PathBuf,
    resolver_args: Vec<String>,
    resolver_log: PathBuf,
    nats_url: String,
    networks: Vec<String>,
}

/// How to start a pipeline.
pub struct PipelineSpec<'a> {
    /// Where the binaries are.
    pub bin_dir: &'a Path,
    /// NATS URL.
    pub nats_url: &'a str,
    /// The resolver's NATS URL when it is not `nats_url` (a leaf node's).
    pub resolver_nats_url: Option<&'a str>,
    /// Network names, all served from `store_url`.
    pub networks: &'a [String],
    /// The store every network reads.
    pub store_url: &'a str,
    /// Archive to a temp directory (`true`) or `--archive off`.
    pub archive: bool,
    /// Where logs go.
    pub log_dir: &'a Path,
    /// More flags for the gateway.
    pub gateway_args: &'a [String],
    /// More flags for the resolver.
    pub resolver_args: &'a [String],
}

impl Pipeline {
    /// Starts the resolver, waits until it answers pings for every network, then the gateway,
    /// and waits until it is ready.
    pub async fn start(spec: PipelineSpec<'_>) -> anyhow::Result<Pipeline> {
        let resolver_url = spec.resolver_nats_url.unwrap_or(spec.nats_url);
        let mut resolver_args = args_of_resolver(resolver_url, spec.networks, spec.store_url);
        resolver_args.extend(spec.resolver_args.iter().cloned());
        let resolver_bin = spec.bin_dir.join("imgfetch-resolver");
        let resolver_log = spec.log_dir.join("resolver.log");
        let resolver = start_resolver(
            &resolver_bin,
            &resolver_args,
            resolver_log.clone(),
            resolver_url,
            spec.networks,
        )
        .await?;

        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let archive = spec.archive.then(tempfile::tempdir).transpose()?;
        let archive_arg = match &archive {
            Some(dir) => dir.path().display().to_string(),
            None => "off".to_owned(),
        };
        let args = vec![
            "--nats-url".to_owned(),
            spec.nats_url.to_owned(),
            "--listen".to_owned(),
            format!("127.0.0.1:{port}"),
            "--instance".to_owned(),
            "bench-gateway".to_owned(),
            "--archive".to_owned(),
            archive_arg,
        ]
        .into_iter()
        .chain(spec.gateway_args.iter().cloned())
        .collect::<Vec<_>>();
        let mut gateway = Proc::spawn(
            &spec.bin_dir.join("imgfetch-gateway"),
            &args,
            spec.log_dir.join("gateway.log"),
        )?;
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let readyz = format!("{base}/readyz");
        wait_until("the gateway to be ready", &mut gateway, || {
            let http = http.clone();
            let readyz = readyz.clone();
            async move {
                http.get(readyz)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success())
            }
        })
        .await?;
        Ok(Pipeline {
            resolver,
            gateway,
            base,
            _archive: archive,
            resolver_bin,
            resolver_args,
            resolver_log,
            nats_url: resolver_url.to_owned(),
            networks: spec.networks.to_vec(),
        })
    }

    /// Starts a new resolver with the same flags (after the old one was killed) and waits
    /// until it serves every network.
    pub async fn restart_resolver(&mut self) -> anyhow::Result<()> {
        self.resolver.kill();
        self.resolver = start_resolver(
            &self.resolver_bin,
            &self.resolver_args,
            self.resolver_log.clone(),
            &self.nats_url,
            &self.networks,
        )
        .await?;
        Ok(())
    }
}

fn args_of_resolver(nats_url: &str, networks: &[String], store_url: &str) -> Vec<String> {
    let mut args = vec![
        "--nats-url".to_owned(),
        nats_url.to_owned(),
        "--instance".to_owned(),
        "bench-resolver".to_owned(),
    ];
    for net in networks {
        args.push("--network".to_owned());
        args.push(format!("{net}={store_url}"));
    }
    args
}

/// The test binaries serving one network, `zone`, from the directory `dir`: the pipeline the
/// process tests of this crate start, with `archive` and the extra flags as given.
pub async fn zone_pipeline(
    nats_url: &str,
    dir: &Path,
    log_dir: &Path,
    archive: bool,
    gateway_args: &[String],
    resolver_args: &[String],
) -> anyhow::Result<Pipeline> {
    Pipeline::start(PipelineSpec {
        bin_dir: &test_bin_dir(),
        nats_url,
        resolver_nats_url: None,
        networks: &["zone".to_owned()],
        store_url: &format!("file://{}", dir.display()),
        archive,
        log_dir,
        gateway_args,
        resolver_args,
    })
    .await
}

/// Starts a resolver and waits until it answers pings for every network.
async fn start_resolver(
    bin: &Path,
    args: &[String],
    log: PathBuf,
    nats_url: &str,
    networks: &[String],
) -> anyhow::Result<Proc> {
    let mut resolver = Proc::spawn(bin, args, log)?;
    let client = async_nats::connect(nats_url).await?;
    for net in networks {
        let subject = imgfetch_common::protocol::ping_subject(net);
        wait_until(
            &format!("the resolver to serve {net}"),
            &mut resolver,
            || {
                let client = client.clone();
                let subject = subject.clone();
                async move { client.request(subject, bytes::Bytes::new()).await.is_ok() }
            },
        )
        .await?;
    }
    Ok(resolver)
}

/// Polls `check` every 50 ms until it holds, failing when `proc` exits or after 30 s, a hung
/// check included.
pub async fn wait_until<F, Fut>(what: &str, proc: &mut Proc, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        proc.check_alive()
            .with_context(|| format!("waiting for {what}"))?;
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left.max(Duration::from_millis(100)), check()).await {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(_) => bail!("timed out after 30 s waiting for {what}: a check hung"),
        }
        if Instant::now() > deadline {
            bail!("timed out after 30 s waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_its_own_usage() {
        let usage = super::usage(std::process::id()).expect("own /proc entry");
        assert!(usage.rss > 0 && usage.peak_rss >= usage.rss, "{usage:?}");
    }
}
