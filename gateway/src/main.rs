//! `imgfetch-gateway`: parse flags, set up telemetry, hand over to [`imgfetch_gateway::run`].

use imgfetch_common::settings::EXIT_CONFIG;
use imgfetch_gateway::config::{Args, Config, RENAMED};
use imgfetch_gateway::nats_identity;

/// mimalloc keeps freed pages for reuse; with the system allocator every 64 KiB image buffer
/// was fresh memory, page-faulted in and zeroed (see docs/PERFORMANCE.md).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args: Args = imgfetch_common::settings::parse_args("imgfetch-gateway", RENAMED);
    if let Some(dir) = args.install_nats_identity.take() {
        // Only the instance and the NATS file settings matter: nothing else is resolved.
        let settings = imgfetch_common::settings::or_exit(
            "imgfetch-gateway",
            args.merged_settings(|p| std::fs::read_to_string(p)),
        );
        let auth = settings.nats.auth();
        match nats_identity::install(&dir, settings.instance.as_deref(), &auth) {
            Ok(done) => println!("imgfetch-gateway: {done}"),
            Err(err) => {
                eprintln!("imgfetch-gateway: {err}");
                std::process::exit(EXIT_CONFIG);
            }
        }
        return Ok(());
    }
    let check_only = args.check_config;
    let resolved = Config::resolve(
        args,
        |p| std::fs::read_to_string(p),
        |k| std::env::var(k).ok(),
    );
    let mut config = imgfetch_common::settings::or_exit("imgfetch-gateway", resolved);
    if check_only {
        // The NATS secret files are read as a start would read them.
        if let Err(err) = config.nats_auth.check_files().await {
            eprintln!("imgfetch-gateway: {err}");
            std::process::exit(imgfetch_common::settings::EXIT_CONFIG);
        }
        // Everything a start checks before it binds and connects; the archive stays unopened.
        println!("imgfetch-gateway: configuration ok: {}", config.summary());
        return Ok(());
    }
    let listen = config.listen;
    imgfetch_common::telemetry::init(config.log_format);
    config.metrics = Some(imgfetch_common::prometheus::install()?);
    let listener = match tokio::net::TcpListener::bind(listen).await {
        Ok(l) => l,
        Err(err) => {
            eprintln!("imgfetch-gateway: cannot listen on {listen}: {err}");
            std::process::exit(EXIT_CONFIG);
        }
    };
    let shutdown = imgfetch_common::shutdown::on_signals();
    if let Err(err) = imgfetch_gateway::run(listener, config, shutdown).await {
        eprintln!("imgfetch-gateway: {err}");
        std::process::exit(1);
    }
    Ok(())
}
