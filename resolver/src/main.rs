//! `imgfetch-resolver`: parse the configuration, then hand over to [`imgfetch_resolver::run`].

use imgfetch_resolver::config::{Args, Config, RENAMED};

/// mimalloc keeps freed pages for reuse; with the system allocator every 64 KiB image buffer
/// was fresh memory, page-faulted in and zeroed (see docs/PERFORMANCE.md).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Args = imgfetch_common::settings::parse_args("imgfetch-resolver", RENAMED);
    let check_only = args.check_config;
    let provision_only = args.provision_only;
    let resolved = Config::resolve(
        args,
        |p| std::fs::read_to_string(p),
        |k| std::env::var(k).ok(),
    );
    let mut config = imgfetch_common::settings::or_exit("imgfetch-resolver", resolved);
    if check_only {
        // The NATS secret files are read as a start would read them.
        if let Err(err) = config.nats_auth.check_files().await {
            eprintln!("imgfetch-resolver: {err}");
            std::process::exit(imgfetch_common::settings::EXIT_CONFIG);
        }
        // Everything a start checks before it connects; stores stay unopened (no S3 call).
        println!("imgfetch-resolver: configuration ok: {}", config.summary());
        return Ok(());
    }
    imgfetch_common::telemetry::init(config.log_format);
    config.metrics = Some(imgfetch_common::prometheus::install()?);
    if provision_only {
        if let Err(err) = imgfetch_resolver::provision_only(&config).await {
            eprintln!("imgfetch-resolver: {err}");
            std::process::exit(1);
        }
        return Ok(());
    }
    let shutdown = imgfetch_common::shutdown::on_signals();
    if let Err(err) = imgfetch_resolver::run(config, shutdown).await {
        eprintln!("imgfetch-resolver: {err}");
        std::process::exit(1);
    }
    Ok(())
}
