//! A/B: the same rows on two builds of the binaries, alternately, in one run on one
//! nats-server. Each round measures its own ceilings first (`bare`, and `bare+file` for the
//! archive), then both builds, so that every figure is a ratio to a ceiling measured minutes
//! before it and the two builds share the machine's noise. The order alternates (A B, then
//! B A, ...): whoever runs right after `bare+file` pays for the disk writing back that run's
//! files, which made the second build look up to 1.5× faster with the archive on when A always
//! went first.
//!
//! `scripts/bench.sh --compare REV` builds REV's binaries and runs this with them as A and
//! the working tree's as B; `docs/PERFORMANCE.md` says how to read the table.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::Serialize;

use crate::corpus::Corpus;
use crate::large::{self, LargeRun};
use crate::report::{ceiling_of, human, Row};
use crate::{bare, clients, measure, Bench};

/// One measured row of one build in one round.
#[derive(Clone, Debug, Serialize)]
pub struct Measured {
    /// `A` (the baseline), `B`, or `ceiling`.
    pub build: &'static str,
    /// Which round, from 0.
    pub round: usize,
    /// What was measured; its ratios are to the same round's ceiling.
    pub row: Row,
}

/// One large transfer of one build in one round.
#[derive(Clone, Debug, Serialize)]
pub struct MeasuredLarge {
    /// `A`, `B`, or `ceiling` (raw NATS).
    pub build: &'static str,
    /// Which round, from 0.
    pub round: usize,
    /// What was measured; its ratio is to the same round's raw NATS.
    pub run: LargeRun,
}

/// Everything an A/B run measured.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Comparison {
    /// The baseline's binaries (A).
    pub baseline_bin_dir: String,
    /// The rows, in the order they ran.
    pub rows: Vec<Measured>,
    /// The large transfers, in the order they ran.
    pub large: Vec<MeasuredLarge>,
}

/// Runs the A/B benchmark with `baseline` as A and the bench's own binaries as B, prints the
/// table, and keeps the figures in the report.
pub(crate) async fn run(bench: &mut Bench<'_>, baseline: &Path) -> anyhow::Result<()> {
    let o = bench.options;
    let builds: [(&'static str, PathBuf); 2] =
        [("A", baseline.to_path_buf()), ("B", bench.bin_dir.clone())];
    let mut cmp = Comparison {
        baseline_bin_dir: baseline.display().to_string(),
        ..Comparison::default()
    };
    bench.say(&format!(
        "A/B: A = {}, B = {}, {} rounds",
        builds[0].1.display(),
        builds[1].1.display(),
        o.rounds
    ));
    let nets = vec!["bench".to_owned()];
    for &size in &o.sizes {
        let corpus = Corpus::create(size, o.images)?;
        let images = (0..o.images)
            .map(|i| corpus.read(i).map(bytes::Bytes::from))
            .collect::<Result<Vec<_>, _>>()?;
        for round in 0..o.rounds {
            bench.say(&format!("{} round {}: ceilings", human(size), round + 1));
            let bare = bare::Bare::start(&bench.nats.url(), images.clone()).await?;
            for &c in &o.concurrency {
                for with_file in [false, true] {
                    let files = tempfile::tempdir()?;
                    let dir = with_file.then(|| files.path());
                    let fetches = bare.fetches(o.images, c, dir).await?;
                    let (s, cpu) = measure(o, fetches, size, None, &bench.watched(None)).await;
                    let path = if with_file { "bare+file" } else { "bare" };
                    let mut row = Row::new(path, size, c, 1, &s);
                    row.cpu_us = cpu;
                    say_row("ceiling", round, &row);
                    cmp.rows.push(Measured {
                        build: "ceiling",
                        round,
                        row,
                    });
                }
            }
            drop(bare);
            let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
            for (build, dir) in order.map(|i| &builds[i]) {
                bench.say(&format!("{} round {}: {build}", human(size), round + 1));
                for archive in [false, true] {
                    let p = bench.pipeline_of(dir, &corpus, &nets, archive).await?;
                    let watched = bench.watched(Some(&p));
                    let paths: &[&str] = if archive {
                        &["http+archive"]
                    } else {
                        &["http", "ws"]
                    };
                    for &path in paths {
                        for &c in &o.concurrency {
                            let fetches = if path == "ws" {
                                clients::websocket(&p.base, "bench", o.images, c).await?
                            } else {
                                clients::http(&p.base, "bench", o.images, c)
                            };
                            let (s, cpu) = measure(o, fetches, size, None, &watched).await;
                            let mut row = Row::new(path, size, c, 1, &s);
                            row.cpu_us = cpu;
                            row.resolver_peak_rss_mib =
                                Some(crate::mib(p.resolver.usage().peak_rss));
                            row.gateway_peak_rss_mib = Some(crate::mib(p.gateway.usage().peak_rss));
                            say_row(build, round, &row);
                            cmp.rows.push(Measured { build, round, row });
                        }
                    }
                }
            }
        }
    }
    relate(&mut cmp.rows);
    if !o.no_large {
        large_rounds(bench, &builds, &mut cmp).await?;
    }
    println!("{}", table(&cmp));
    let failed: u64 = cmp.rows.iter().map(|m| m.row.errors).sum::<u64>()
        + cmp.large.iter().filter(|m| !m.run.verified).count() as u64;
    bench.report.comparison = Some(cmp);
    if let Some(dir) = o.json.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&o.json, serde_json::to_vec_pretty(&bench.report)?)
        .with_context(|| format!("writing {}", o.json.display()))?;
    bench.say(&format!("JSON written to {}", o.json.display()));
    if failed > 0 {
        anyhow::bail!("{failed} requests failed during the A/B run");
    }
    Ok(())
}

fn say_row(build: &str, round: usize, r: &Row) {
    eprintln!(
        "  {build:<7} r{} {:<13} {:>5} c{:<3} {:>8.0} req/s  p50 {:.2} ms  cpu µs/req nats/res/gw {:.0}/{:.0}/{:.0}  errors {}",
        round + 1,
        r.path,
        human(r.size),
        r.concurrency,
        r.req_per_s,
        r.p50_ms,
        r.cpu_us.nats_server,
        r.cpu_us.resolver,
        r.cpu_us.gateway,
        r.errors
    );
}

/// Fills each build's ratios to the ceiling of its own round.
fn relate(rows: &mut [Measured]) {
    let ceilings: Vec<Measured> = rows
        .iter()
        .filter(|m| m.build == "ceiling")
        .cloned()
        .collect();
    for m in rows.iter_mut().filter(|m| m.build != "ceiling") {
        let want = ceiling_of(&m.row.path);
        if let Some(c) = ceilings.iter().find(|c| {
            c.round == m.round
                && c.row.path == want
                && c.row.size == m.row.size
                && c.row.concurrency == m.row.concurrency
        }) {
            m.row.ratio_to_ceiling = Some(m.row.req_per_s / c.row.req_per_s.max(1e-9));
            m.row.p50_over_ceiling = Some(m.row.p50_ms / c.row.p50_ms.max(1e-9));
        }
    }
}

/// The large image, `rounds` times: raw NATS, then A's and B's transfers on each path, each on
/// fresh processes.
async fn large_rounds(
    bench: &Bench<'_>,
    builds: &[(&'static str, PathBuf); 2],
    cmp: &mut Comparison,
) -> anyhow::Result<()> {
    let size = bench.options.large_size;
    let nats = imgfetch_tests::nats::NatsServer::start();
    let dir = tempfile::tempdir()?;
    let sha = large::create_image(dir.path(), size);
    let store_url = format!("file://{}", dir.path().display());
    let image = large::Image {
        store_url: &store_url,
        size,
        sha: &sha,
    };
    for round in 0..bench.options.rounds {
        bench.say(&format!("large {} round {}", human(size), round + 1));
        let raw = large::raw_nats(&nats.url(), size).await?;
        eprintln!(
            "  ceiling r{} raw nats {:>8.1} MB/s",
            round + 1,
            raw.mb_per_s
        );
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for (build, bin_dir) in order.map(|i| &builds[i]) {
            for path in ["http", "ws", "http+archive"] {
                let run = large::through_pipeline(
                    bin_dir,
                    &nats.url(),
                    bench.logs.path(),
                    &image,
                    path,
                    raw.mb_per_s,
                )
                .await?;
                eprintln!(
                    "  {build:<7} r{} {:<13} {:>8.1} MB/s  verified {}  growth MiB resolver {:.0} gateway {:.0}",
                    round + 1,
                    path,
                    run.mb_per_s,
                    run.verified,
                    run.resolver_growth_mib().unwrap_or_default(),
                    run.gateway_growth_mib().unwrap_or_default()
                );
                cmp.large.push(MeasuredLarge { build, round, run });
            }
        }
        cmp.large.push(MeasuredLarge {
            build: "ceiling",
            round,
            run: raw,
        });
    }
    Ok(())
}

fn mean(values: impl Iterator<Item = f64>) -> f64 {
    let (sum, n) = values.fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    if n == 0 {
        f64::NAN
    } else {
        sum / n as f64
    }
}

fn list(values: &[f64]) -> String {
    values
        .iter()
        .map(|v| format!("{v:.2}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The A/B table a person reads: per row, each round's ratio to its ceiling for A and for B,
/// B over A, and the mean CPU per request of each process.
pub fn table(cmp: &Comparison) -> String {
    let mut groups: BTreeMap<(usize, String, usize), Vec<&Measured>> = BTreeMap::new();
    for m in cmp.rows.iter().filter(|m| m.build != "ceiling") {
        groups
            .entry((m.row.size, m.row.path.clone(), m.row.concurrency))
            .or_default()
            .push(m);
    }
    let mut out = format!(
        "{:<13} {:>5} {:>4} {:>18} {:>18} {:>6} {:>18} {:>18} {:>6} {:>16} {:>16}\n",
        "path",
        "size",
        "conc",
        "A × ceiling",
        "B × ceiling",
        "B/A",
        "A p50 × ceiling",
        "B p50 × ceiling",
        "B/A",
        "A µs nats/res/gw",
        "B µs nats/res/gw"
    );
    for ((size, path, c), ms) in &groups {
        let of = |build: &str, f: &dyn Fn(&Row) -> Option<f64>| -> Vec<f64> {
            ms.iter()
                .filter(|m| m.build == build)
                .filter_map(|m| f(&m.row))
                .collect()
        };
        let (ra, rb) = (
            of("A", &|r| r.ratio_to_ceiling),
            of("B", &|r| r.ratio_to_ceiling),
        );
        let (pa, pb) = (
            of("A", &|r| r.p50_over_ceiling),
            of("B", &|r| r.p50_over_ceiling),
        );
        let cpu = |build: &str| {
            let rows: Vec<&Row> = ms
                .iter()
                .filter(|m| m.build == build)
                .map(|m| &m.row)
                .collect();
            format!(
                "{:.0}/{:.0}/{:.0}",
                mean(rows.iter().map(|r| r.cpu_us.nats_server)),
                mean(rows.iter().map(|r| r.cpu_us.resolver)),
                mean(rows.iter().map(|r| r.cpu_us.gateway))
            )
        };
        out.push_str(&format!(
            "{:<13} {:>5} {:>4} {:>18} {:>18} {:>6.2} {:>18} {:>18} {:>6.2} {:>16} {:>16}\n",
            path,
            human(*size),
            c,
            list(&ra),
            list(&rb),
            mean(rb.iter().copied()) / mean(ra.iter().copied()),
            list(&pa),
            list(&pb),
            mean(pb.iter().copied()) / mean(pa.iter().copied()),
            cpu("A"),
            cpu("B"),
        ));
    }
    if !cmp.large.is_empty() {
        out.push_str(&format!(
            "\n{:<13} {:>8} {:>18} {:>18} {:>6} {:>18} {:>18}\n",
            "large path",
            "MiB",
            "A × raw NATS",
            "B × raw NATS",
            "B/A",
            "A growth MiB r/g",
            "B growth MiB r/g"
        ));
        let mut paths: Vec<&str> = Vec::new();
        for m in cmp.large.iter().filter(|m| m.build != "ceiling") {
            if !paths.contains(&m.run.path.as_str()) {
                paths.push(&m.run.path);
            }
        }
        for path in paths {
            let runs = |build: &str| -> Vec<&LargeRun> {
                cmp.large
                    .iter()
                    .filter(|m| m.build == build && m.run.path == path)
                    .map(|m| &m.run)
                    .collect()
            };
            let ratios = |build: &str| -> Vec<f64> {
                runs(build).iter().filter_map(|r| r.ratio_to_raw).collect()
            };
            let growth = |build: &str| {
                let rs = runs(build);
                format!(
                    "{:.0}/{:.0}",
                    mean(rs.iter().filter_map(|r| r.resolver_growth_mib())),
                    mean(rs.iter().filter_map(|r| r.gateway_growth_mib()))
                )
            };
            let (ra, rb) = (ratios("A"), ratios("B"));
            out.push_str(&format!(
                "{:<13} {:>8.0} {:>18} {:>18} {:>6.2} {:>18} {:>18}\n",
                path,
                runs("B").first().map_or(0.0, |r| r.size_mib),
                list(&ra),
                list(&rb),
                mean(rb.iter().copied()) / mean(ra.iter().copied()),
                growth("A"),
                growth("B"),
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::Sample;

    fn row(path: &str, rate: u64, p50_us: u32) -> Row {
        let s = Sample {
            done: rate,
            elapsed: std::time::Duration::from_secs(1),
            latencies_us: vec![p50_us; 3],
            ..Sample::default()
        };
        Row::new(path, 65536, 64, 1, &s)
    }

    #[test]
    fn each_build_is_related_to_the_ceiling_of_its_own_round() {
        let m = |build, round, row| Measured { build, round, row };
        let mut rows = vec![
            m("ceiling", 0, row("bare", 1000, 100)),
            m("ceiling", 0, row("bare+file", 500, 100)),
            m("A", 0, row("http", 500, 300)),
            m("B", 0, row("http", 750, 200)),
            m("A", 0, row("http+archive", 250, 300)),
            m("ceiling", 1, row("bare", 2000, 50)),
            m("ceiling", 1, row("bare+file", 1000, 50)),
            m("A", 1, row("http", 1000, 150)),
            m("B", 1, row("http", 1600, 100)),
        ];
        relate(&mut rows);
        assert_eq!(rows[2].row.ratio_to_ceiling, Some(0.5));
        assert_eq!(rows[3].row.ratio_to_ceiling, Some(0.75));
        // The archive against the ceiling that writes files.
        assert_eq!(rows[4].row.ratio_to_ceiling, Some(0.5));
        assert_eq!(rows[7].row.ratio_to_ceiling, Some(0.5));
        assert_eq!(rows[8].row.ratio_to_ceiling, Some(0.8));
        let text = table(&Comparison {
            rows,
            ..Comparison::default()
        });
        let http = text
            .lines()
            .find(|l| l.starts_with("http ") && l.contains("64K"))
            .expect("an http row");
        // A: 0.50, 0.50; B: 0.75, 0.80; B/A = 0.775 / 0.5 = 1.55.
        assert!(http.contains("0.50, 0.50"), "{http}");
        assert!(http.contains("0.75, 0.80"), "{http}");
        assert!(http.contains("1.55"), "{http}");
    }
}
