//! `imgfetch`: parses the command line and hands it to [`imgfetch_cli::run`].

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // Bad usage exits here with clap's status 2.
    let cli = imgfetch_cli::args::Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("imgfetch: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(imgfetch_cli::run(cli))
}
