//! The benchmark's results: one [`Row`] per measured run, printed as a table and written as
//! JSON with the same fields.

use serde::Serialize;

use crate::load::Sample;

/// CPU time per correct answer, microseconds, by process.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CpuPerRequest {
    /// nats-server.
    pub nats_server: f64,
    /// The resolver (or the bare responder, which shares the load process).
    pub resolver: f64,
    /// The gateway.
    pub gateway: f64,
    /// The load generator (this process).
    pub load: f64,
}

/// One measured run.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    /// `bare`, `floor`, `http`, `http+archive`, `ws`, `http paced`, ...
    pub path: String,
    /// Image size, bytes.
    pub size: usize,
    /// Requests in flight.
    pub concurrency: usize,
    /// Networks the resolver served.
    pub networks: usize,
    /// Correct answers per second.
    pub req_per_s: f64,
    /// Image megabytes (10^6) per second.
    pub mb_per_s: f64,
    /// Latency quantiles and maximum, milliseconds.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Slowest.
    pub max_ms: f64,
    /// Throughput over the bare ceiling's at the same size and concurrency.
    pub ratio_to_ceiling: Option<f64>,
    /// p50 over the bare ceiling's p50 at the same size and concurrency (paced runs: at the
    /// same rate).
    pub p50_over_ceiling: Option<f64>,
    /// Requests that failed.
    pub errors: u64,
    /// The first failure, if any.
    pub first_error: Option<String>,
    /// CPU per request.
    pub cpu_us: CpuPerRequest,
    /// Peak RSS of the resolver so far, MiB.
    pub resolver_peak_rss_mib: Option<f64>,
    /// Peak RSS of the gateway so far, MiB.
    pub gateway_peak_rss_mib: Option<f64>,
}

impl Row {
    /// A row from a sample.
    pub fn new(path: &str, size: usize, concurrency: usize, networks: usize, s: &Sample) -> Row {
        Row {
            path: path.to_owned(),
            size,
            concurrency,
            networks,
            req_per_s: s.rate(),
            mb_per_s: s.rate() * size as f64 / 1e6,
            p50_ms: s.quantile_ms(0.5),
            p99_ms: s.quantile_ms(0.99),
            p999_ms: s.quantile_ms(0.999),
            max_ms: s.max_ms(),
            ratio_to_ceiling: None,
            p50_over_ceiling: None,
            errors: s.errors,
            first_error: s.first_error.clone(),
            cpu_us: CpuPerRequest::default(),
            resolver_peak_rss_mib: None,
            gateway_peak_rss_mib: None,
        }
    }
}

/// Memory with many idle websocket clients.
#[derive(Clone, Debug, Default, Serialize)]
pub struct IdleWebsockets {
    /// Clients connected.
    pub clients: usize,
    /// Gateway RSS before they connected, MiB.
    pub gateway_rss_before_mib: f64,
    /// Gateway RSS with all of them connected, MiB.
    pub gateway_rss_with_clients_mib: f64,
    /// Whether a fetch still succeeded with all of them connected.
    pub fetch_ok: bool,
}

/// Everything one run measured.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    /// The binaries measured.
    pub bin_dir: String,
    /// nats-server's version line.
    pub nats_server: String,
    /// The runs.
    pub rows: Vec<Row>,
    /// The idle-websocket run.
    pub idle_websockets: Option<IdleWebsockets>,
    /// The large-image runs, the raw NATS ceiling first.
    pub large: Vec<crate::large::LargeRun>,
    /// The A/B run, in A/B mode (the other fields are then empty).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comparison: Option<crate::compare::Comparison>,
}

impl Report {
    /// Failed requests over all runs.
    pub fn failed_requests(&self) -> u64 {
        self.rows.iter().map(|r| r.errors).sum::<u64>()
            + u64::from(self.idle_websockets.as_ref().is_some_and(|w| !w.fetch_ok))
            + self.large.iter().filter(|r| !r.verified).count() as u64
    }

    /// Fills in the ratios to the bare ceiling of the same size and concurrency.
    pub fn relate_to_ceiling(&mut self) {
        let bare: Vec<Row> = self
            .rows
            .iter()
            .filter(|r| r.path.starts_with("bare"))
            .cloned()
            .collect();
        for row in &mut self.rows {
            if row.path.starts_with("bare") {
                continue;
            }
            // Paced runs compare with the ceiling paced at the same rate, the archive with the
            // ceiling that writes each image to a file.
            let paced = row.path.ends_with("paced");
            let ceiling = ceiling_of(&row.path);
            if let Some(b) = bare.iter().find(|b| {
                b.path == ceiling && b.size == row.size && b.concurrency == row.concurrency
            }) {
                if !paced {
                    row.ratio_to_ceiling = Some(row.req_per_s / b.req_per_s.max(1e-9));
                }
                row.p50_over_ceiling = Some(row.p50_ms / b.p50_ms.max(1e-9));
            }
        }
    }

    /// The table a person reads.
    pub fn table(&self) -> String {
        let mut out = format!(
            "{:<13} {:>7} {:>4} {:>4} {:>9} {:>8} {:>7} {:>7} {:>7} {:>7} {:>6} {:>6} {:>5} {:>28} {:>13}\n",
            "path", "size", "conc", "nets", "req/s", "MB/s", "p50ms", "p99ms", "p999ms", "maxms",
            "ratio", "p50x", "errs", "cpu µs/req nats/res/gw/load", "peak MiB r/g"
        );
        for r in &self.rows {
            let opt = |v: Option<f64>, d: usize| v.map_or("-".to_owned(), |v| format!("{v:.d$}"));
            out.push_str(&format!(
                "{:<13} {:>7} {:>4} {:>4} {:>9.0} {:>8.1} {:>7.2} {:>7.2} {:>7.2} {:>7.2} {:>6} {:>6} {:>5} {:>28} {:>13}\n",
                r.path,
                human(r.size),
                r.concurrency,
                r.networks,
                r.req_per_s,
                r.mb_per_s,
                r.p50_ms,
                r.p99_ms,
                r.p999_ms,
                r.max_ms,
                opt(r.ratio_to_ceiling, 2),
                opt(r.p50_over_ceiling, 2),
                r.errors,
                format!(
                    "{:.0}/{:.0}/{:.0}/{:.0}",
                    r.cpu_us.nats_server, r.cpu_us.resolver, r.cpu_us.gateway, r.cpu_us.load
                ),
                format!(
                    "{}/{}",
                    opt(r.resolver_peak_rss_mib, 0),
                    opt(r.gateway_peak_rss_mib, 0)
                ),
            ));
        }
        if let Some(w) = &self.idle_websockets {
            out.push_str(&format!(
                "\nidle websockets: {} clients; gateway RSS {:.1} MiB before, {:.1} MiB with them; fetch while connected: {}\n",
                w.clients,
                w.gateway_rss_before_mib,
                w.gateway_rss_with_clients_mib,
                if w.fetch_ok { "ok" } else { "FAILED" }
            ));
        }
        for r in self.rows.iter().filter(|r| r.first_error.is_some()) {
            out.push_str(&format!(
                "first error of {} {} c{}: {}\n",
                r.path,
                human(r.size),
                r.concurrency,
                r.first_error.as_deref().unwrap_or_default()
            ));
        }
        out
    }
}

/// The ceiling row a path is measured against: `bare paced` for paced runs, `bare+file` for
/// the archive, `bare` for the rest.
pub fn ceiling_of(path: &str) -> &'static str {
    if path.ends_with("paced") {
        "bare paced"
    } else if path.contains("archive") {
        "bare+file"
    } else {
        "bare"
    }
}

/// `16K`, `1M`, or bytes.
pub fn human(size: usize) -> String {
    if size >= 1 << 20 && size % (1 << 20) == 0 {
        format!("{}M", size >> 20)
    } else if size >= 1 << 10 && size % (1 << 10) == 0 {
        format!("{}K", size >> 10)
    } else {
        size.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(done: u64, p50_us: u32) -> Sample {
        Sample {
            done,
            elapsed: std::time::Duration::from_secs(1),
            latencies_us: vec![p50_us; 3],
            ..Sample::default()
        }
    }

    #[test]
    fn ratios_are_to_the_bare_run_of_the_same_size_and_concurrency() {
        let mut report = Report {
            rows: vec![
                Row::new("bare", 1024, 64, 1, &sample(1000, 100)),
                Row::new("bare", 1024, 1, 1, &sample(500, 50)),
                Row::new("http", 1024, 64, 1, &sample(750, 300)),
            ],
            ..Report::default()
        };
        report.relate_to_ceiling();
        let http = &report.rows[2];
        assert_eq!(http.ratio_to_ceiling, Some(0.75));
        assert!(
            (http.p50_over_ceiling.unwrap() - 3.0).abs() < 1e-9,
            "{http:?}"
        );
        assert!(report.table().contains("0.75"));
        assert_eq!(human(65536), "64K");
        assert_eq!(human(1 << 20), "1M");
    }
}
