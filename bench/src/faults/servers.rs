//! The servers a fault stops and starts again: `nats-server` (one node, or three in a cluster)
//! and `s3s-fs`, each on a fixed port and a data directory that outlive its process, and a
//! small tmpfs for a disk that fills up.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

use crate::procs::Proc;

/// The hub's JetStream domain, which resolvers behind a leaf node name.
pub const HUB_DOMAIN: &str = "hub";

/// Access key of the fault suite's S3 server.
pub const S3_ACCESS_KEY: &str = "imgfetch-faults";
/// Secret key of the fault suite's S3 server.
pub const S3_SECRET_KEY: &str = "imgfetch-faults-secret";

/// A free TCP port on loopback (free when asked; the server binds it soon after).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn binary(name: &str, var: &str) -> PathBuf {
    std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(name))
}

/// Waits until something listens on `port`, failing when `proc` exits or after 20 s.
fn wait_listening(what: &str, proc: &mut Proc, port: u16) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        proc.check_alive()
            .with_context(|| format!("waiting for {what}"))?;
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(20) {
            bail!("{what} did not listen on port {port} within 20 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One `nats-server` with JetStream (or a leaf node without), on a port and store directory it
/// keeps across restarts.
pub struct NatsNode {
    /// Its `server_name` (`n0`, `n1`, …), as stream info names a cluster's leader.
    pub name: String,
    port: u16,
    /// A hub's leafnode port.
    leaf_port: Option<u16>,
    conf: PathBuf,
    log: PathBuf,
    proc: Option<Proc>,
}

impl NatsNode {
    /// Starts one server with JetStream under `dir`.
    pub fn single(dir: &Path) -> anyhow::Result<NatsNode> {
        let mut nodes = NatsNode::configure(dir, 1, false, false)?;
        let mut node = nodes.remove(0);
        node.start()?;
        Ok(node)
    }

    /// Starts `count` servers routed into one cluster on loopback, JetStream on each.
    pub fn cluster(dir: &Path, count: usize) -> anyhow::Result<Vec<NatsNode>> {
        let mut nodes = NatsNode::configure(dir, count, true, false)?;
        for node in &mut nodes {
            node.start()?;
        }
        Ok(nodes)
    }

    /// Starts a hub of `count` servers (a cluster when more than one): JetStream in domain
    /// [`HUB_DOMAIN`], and a leafnode port on each that advertises nothing.
    pub fn hub(dir: &Path, count: usize) -> anyhow::Result<Vec<NatsNode>> {
        let mut nodes = NatsNode::configure(dir, count, count > 1, true)?;
        for node in &mut nodes {
            node.start()?;
        }
        Ok(nodes)
    }

    /// Starts a leaf node named `name`, without JetStream, dialing `remotes` (the hub's
    /// leafnode URLs, or a proxy's).
    pub fn leaf(dir: &Path, name: &str, remotes: &[String]) -> anyhow::Result<NatsNode> {
        let port = free_port()?;
        let urls = remotes
            .iter()
            .map(|u| format!("{u:?}"))
            .collect::<Vec<_>>()
            .join(", ");
        let text = format!(
            "server_name: {name}\nlisten: 127.0.0.1:{port}\nleafnodes {{\n  remotes: [{{ urls: [{urls}] }}]\n}}\n"
        );
        let conf = dir.join(format!("{name}.conf"));
        std::fs::write(&conf, text)?;
        let mut node = NatsNode {
            log: dir.join(format!("{name}.log")),
            name: name.to_owned(),
            port,
            leaf_port: None,
            conf,
            proc: None,
        };
        node.start()?;
        Ok(node)
    }

    fn configure(
        dir: &Path,
        count: usize,
        cluster: bool,
        hub: bool,
    ) -> anyhow::Result<Vec<NatsNode>> {
        let ports = (0..count)
            .map(|_| Ok((free_port()?, free_port()?)))
            .collect::<anyhow::Result<Vec<(u16, u16)>>>()?;
        let routes = ports
            .iter()
            .map(|(_, route)| format!("nats-route://127.0.0.1:{route}"))
            .collect::<Vec<_>>()
            .join(", ");
        let mut nodes = Vec::new();
        for (i, (port, route)) in ports.iter().enumerate() {
            let name = format!("n{i}");
            let store = dir.join(format!("{name}-jetstream"));
            let domain = if hub {
                format!("  domain: {HUB_DOMAIN}\n")
            } else {
                String::new()
            };
            let mut text = format!(
                "server_name: {name}\nlisten: 127.0.0.1:{port}\njetstream {{\n  store_dir: {store:?}\n  max_file_store: 1GB\n  max_memory_store: 64MB\n{domain}}}\n"
            );
            let leaf_port = if hub { Some(free_port()?) } else { None };
            if let Some(leaf) = leaf_port {
                text.push_str(&format!(
                    "leafnodes {{\n  listen: 127.0.0.1:{leaf}\n  no_advertise: true\n}}\n"
                ));
            }
            if cluster {
                text.push_str(&format!(
                    "cluster {{\n  name: imgfetch-faults\n  listen: 127.0.0.1:{route}\n  routes: [{routes}]\n}}\n"
                ));
            }
            let conf = dir.join(format!("{name}.conf"));
            std::fs::write(&conf, text)?;
            nodes.push(NatsNode {
                log: dir.join(format!("{name}.log")),
                name,
                port: *port,
                leaf_port,
                conf,
                proc: None,
            });
        }
        Ok(nodes)
    }

    /// Starts it (again), same port, same store, and waits until it listens.
    pub fn start(&mut self) -> anyhow::Result<()> {
        let bin = binary("nats-server", "NATS_SERVER_BIN");
        let args = vec!["-c".to_owned(), self.conf.display().to_string()];
        let mut proc = Proc::spawn_logging(&bin, &args, self.log.clone(), "")?;
        wait_listening(&format!("nats-server {}", self.name), &mut proc, self.port)?;
        self.proc = Some(proc);
        Ok(())
    }

    /// Stops it with SIGTERM (killed after 10 s).
    pub fn terminate(&mut self) {
        if let Some(mut proc) = self.proc.take() {
            proc.terminate(Duration::from_secs(10));
        }
    }

    /// Kills it with SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut proc) = self.proc.take() {
            proc.kill();
        }
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// A hub's leafnode address, `127.0.0.1:<port>`.
    pub fn leaf_addr(&self) -> Option<std::net::SocketAddr> {
        self.leaf_port.map(|p| ([127, 0, 0, 1], p).into())
    }
}

/// `s3s-fs` on a port and data directory it keeps across restarts.
pub struct S3Node {
    port: u16,
    data: PathBuf,
    log: PathBuf,
    proc: Option<Proc>,
}

impl S3Node {
    /// Starts it with its data under `dir/s3`.
    pub fn start_in(dir: &Path) -> anyhow::Result<S3Node> {
        let data = dir.join("s3");
        std::fs::create_dir_all(&data)?;
        let mut node = S3Node {
            port: free_port()?,
            data,
            log: dir.join("s3s-fs.log"),
            proc: None,
        };
        node.start()?;
        Ok(node)
    }

    /// Starts it (again) and waits until it listens.
    pub fn start(&mut self) -> anyhow::Result<()> {
        let bin = binary("s3s-fs", "S3S_FS_BIN");
        let args = [
            "--host",
            "127.0.0.1",
            "--port",
            &self.port.to_string(),
            "--access-key",
            S3_ACCESS_KEY,
            "--secret-key",
            S3_SECRET_KEY,
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([self.data.display().to_string()])
        .collect::<Vec<_>>();
        let mut proc = Proc::spawn_logging(&bin, &args, self.log.clone(), "warn")?;
        wait_listening("s3s-fs", &mut proc, self.port)?;
        self.proc = Some(proc);
        Ok(())
    }

    /// Stops it with SIGTERM (killed after 5 s).
    pub fn stop(&mut self) {
        if let Some(mut proc) = self.proc.take() {
            proc.terminate(Duration::from_secs(5));
        }
    }

    /// A bucket's directory: s3s-fs serves each file under it as an object.
    pub fn bucket_dir(&self, bucket: &str) -> PathBuf {
        self.data.join(bucket)
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// A tmpfs of a few MiB mounted on a directory, unmounted on drop: a disk that really fills.
pub struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    /// Mounts a `size`-byte tmpfs on `dir` (needs root, or `CAP_SYS_ADMIN`).
    pub fn mount(dir: &Path, size: u64) -> anyhow::Result<Tmpfs> {
        std::fs::create_dir_all(dir)?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .context("cannot run mount")?;
        if !out.status.success() {
            bail!(
                "mount -t tmpfs on {} failed: {}",
                dir.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(Tmpfs {
            dir: dir.to_path_buf(),
        })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).status();
    }
}
