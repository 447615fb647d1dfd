//! Leaf zones over a slow link (docs/DEPLOY.md, "Leaf zones"): the same HTTP requests through a
//! resolver behind a leaf node, with 0, 10, 50 ms (`--leaf-delays`) added to the link's round
//! trip by a latency proxy ([`imgfetch_tests::latency`]) between the leaf and the hub. Each delay
//! gets a hub and leaf of its own (no users: measuring, not isolation); the gateway is on the
//! hub, the resolver on the leaf with `--zone` and `--jetstream-domain hub`. Rows are named
//! `leaf+<ms>ms`, beside the direct `http` rows of the same run. Then one large image over the
//! slowest link, against raw NATS across the same link, with the gateway's default credit window
//! and with one sized to the link (`--leaf-window-bytes`).

use std::time::Duration;

use imgfetch_tests::latency::LatencyProxy;
use imgfetch_tests::nats::{wait_hub_jetstream, NatsServer, HUB_DOMAIN};

use crate::clients;
use crate::corpus::Corpus;
use crate::large::{self, LargeRun};
use crate::procs::{Pipeline, PipelineSpec};
use crate::report::Row;
use crate::{measure, Bench, Watched};

/// The network (and zone) the leaf rows serve.
const ZONE: &str = "zone";

impl Bench<'_> {
    /// The leaf rows for images of `size`: per added round trip, concurrency 1 and each of
    /// `--leaf-concurrency`.
    pub(crate) async fn leaf_zone(&mut self, size: usize) -> anyhow::Result<()> {
        let o = self.options;
        let corpus = Corpus::create(size, o.images)?;
        let networks = vec![ZONE.to_owned()];
        for &ms in &o.leaf_delays {
            self.say(&format!("leaf zone, {ms} ms added to the round trip"));
            let (hub, proxy, leaf) = leaf_link(ms).await?;
            let mut resolver_args: Vec<String> = ["--zone", ZONE, "--jetstream-domain", HUB_DOMAIN]
                .iter()
                .map(|s| s.to_string())
                .collect();
            if let Some(n) = o.leaf_resolver_concurrency {
                resolver_args.extend(["--concurrency".to_owned(), n.to_string()]);
            }
            if let Some(n) = o.leaf_pull_ahead {
                resolver_args.extend(["--pull-ahead".to_owned(), n.to_string()]);
            }
            let p = Pipeline::start(PipelineSpec {
                bin_dir: &self.bin_dir,
                nats_url: &hub.url(),
                resolver_nats_url: Some(&leaf.url()),
                networks: &networks,
                store_url: &corpus.url(),
                archive: false,
                log_dir: self.logs.path(),
                gateway_args: &[],
                resolver_args: &resolver_args,
            })
            .await?;
            let watched = Watched {
                nats: hub.pid(),
                resolver: Some(p.resolver.pid()),
                gateway: Some(p.gateway.pid()),
            };
            let path = format!("leaf+{ms}ms");
            for c in std::iter::once(1).chain(o.leaf_concurrency.iter().copied()) {
                let fetches = clients::http(&p.base, ZONE, o.images, c);
                let (s, cpu) = measure(o, fetches, size, None, &watched).await;
                self.push(Row::new(&path, size, c, 1, &s), cpu, Some(&p));
            }
            drop(p);
            drop(leaf);
            drop(proxy);
        }
        Ok(())
    }
}

impl Bench<'_> {
    /// One image of `size` from a zone behind a leaf node over a link slowed by `ms` of added
    /// round trip: raw NATS across the link first (leaf to hub), then HTTP through the pipeline
    /// with each credit window of `windows` (bytes; the gateway's `--stream-window-bytes`).
    pub(crate) async fn leaf_large(
        &mut self,
        size: usize,
        ms: u64,
        windows: &[Option<u64>],
    ) -> anyhow::Result<()> {
        self.say(&format!(
            "one {} image from a leaf zone, {ms} ms added to the round trip",
            crate::report::human(size)
        ));
        let (hub, _proxy, leaf) = leaf_link(ms).await?;
        let dir = tempfile::tempdir()?;
        let sha = large::create_image(dir.path(), size);
        let mut raw = large::raw_nats_between(&leaf.url(), &hub.url(), size).await?;
        raw.path = format!("raw nats leaf+{ms}ms");
        eprintln!("  {:<24} {:>8.1} MB/s", raw.path, raw.mb_per_s);
        let store_url = format!("file://{}", dir.path().display());
        let mut runs = vec![raw.clone()];
        for window in windows {
            let gateway_args: Vec<String> = match window {
                Some(bytes) => vec!["--stream-window-bytes".to_owned(), bytes.to_string()],
                None => Vec::new(),
            };
            let resolver_args: Vec<String> = ["--zone", "large", "--jetstream-domain", HUB_DOMAIN]
                .iter()
                .map(|s| s.to_string())
                .collect();
            let p = Pipeline::start(PipelineSpec {
                bin_dir: &self.bin_dir,
                nats_url: &hub.url(),
                resolver_nats_url: Some(&leaf.url()),
                networks: &["large".to_owned()],
                store_url: &store_url,
                archive: false,
                log_dir: self.logs.path(),
                gateway_args: &gateway_args,
                resolver_args: &resolver_args,
            })
            .await?;
            let window_name = match window {
                Some(bytes) => format!("window {}", crate::report::human(*bytes as usize)),
                None => "default window".to_owned(),
            };
            let mut run: LargeRun =
                large::http(&p, &format!("http leaf+{ms}ms {window_name}"), size, &sha).await?;
            run.ratio_to_raw = Some(run.mb_per_s / raw.mb_per_s.max(1e-9));
            eprintln!(
                "  {:<24} {:>8.1} MB/s  {:.2}x raw  verified {}  peak MiB resolver {:.0} gateway {:.0}",
                run.path,
                run.mb_per_s,
                run.ratio_to_raw.unwrap_or_default(),
                run.verified,
                run.resolver_peak_mib.unwrap_or_default(),
                run.gateway_peak_mib.unwrap_or_default()
            );
            runs.push(run);
        }
        self.report.large.extend(runs);
        Ok(())
    }
}

/// A hub, a latency proxy adding `ms` to the round trip in front of its leafnode port, and a
/// leaf dialing through it, returned once the hub's JetStream answers through the leaf.
async fn leaf_link(ms: u64) -> anyhow::Result<(NatsServer, LatencyProxy, NatsServer)> {
    let hub = NatsServer::start_open_hub();
    let leaf_port = hub.leaf_port().expect("a hub has a leafnode port");
    let proxy = LatencyProxy::start(
        ([127, 0, 0, 1], leaf_port).into(),
        Duration::from_micros(ms * 500),
    )
    .await?;
    let leaf = NatsServer::start_open_leaf(proxy.addr);
    wait_hub_jetstream(&leaf.url()).await;
    Ok((hub, proxy, leaf))
}
