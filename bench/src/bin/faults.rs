//! `imgfetch-faults`: parse flags, then hand over to [`imgfetch_bench::faults::run`]; exits
//! non-zero when a fault lost or duplicated a request, or failed a check.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let options = imgfetch_bench::faults::Options::parse();
    let reports = imgfetch_bench::faults::run(&options).await?;
    let failed: Vec<&str> = reports
        .iter()
        .filter(|r| !r.passed())
        .map(|r| r.fault.as_str())
        .collect();
    if !failed.is_empty() {
        anyhow::bail!("faults that failed: {}", failed.join(", "));
    }
    Ok(())
}
