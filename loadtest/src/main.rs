//! The `pace-loadtest` binary: parses the command line and runs it on a
//! single-threaded Tokio runtime (one core per process; scale comes from
//! worker processes, which keep the load generator's own overhead small).

use clap::Parser;

fn main() -> anyhow::Result<()> {
    let cli = pace_loadtest::cli::Cli::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(pace_loadtest::run(cli))
}
