//! `imgfetch-bench`: parse flags, then hand over to [`imgfetch_bench::run`].

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let options = imgfetch_bench::Options::parse();
    let report = imgfetch_bench::run(&options).await?;
    if report.failed_requests() > 0 {
        anyhow::bail!(
            "{} requests failed during the benchmark",
            report.failed_requests()
        );
    }
    Ok(())
}
