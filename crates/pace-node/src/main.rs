//! The `pace-node` binary: parses the command line, sets up logging and
//! signals, and runs the node library.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use pace_node::config::{AuditCommand, Cli, Command, KeysCommand, ServeArgs};
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Serve(args)) => serve(args),
        None => ServeArgs::from_env().map_err(|e| e.exit()).and_then(serve),
        Some(Command::CheckConfig(args)) => check_config(args),
        Some(Command::Keys(cmd)) => keys(cmd),
        Some(Command::Admin(cmd)) => return pace_node::accounts::cli::main(cmd),
        Some(Command::Audit(cmd)) => return audit(cmd),
        Some(Command::Gateway(cmd)) => {
            pace_gateway::execute(&cmd, &mut std::io::stdout().lock()).map_err(anyhow::Error::from)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pace-node: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn keys(cmd: KeysCommand) -> anyhow::Result<()> {
    use pace_node::admission;
    match cmd {
        KeysCommand::Generate {
            out,
            activate_in,
            alg,
        } => {
            let delay = activate_in.unwrap_or_default();
            let kid = admission::generate_alg_into_at(&out, alg, admission::unix_now(), delay)?;
            if delay.is_zero() {
                println!(
                    "added {alg} key {kid} to {} (it signs from the next start of nodes with --admission-alg {alg})",
                    out.display()
                );
            } else {
                println!(
                    "added {alg} key {kid} to {} (published from the next node start, signs after {})",
                    out.display(),
                    humantime::format_duration(delay)
                );
            }
        }
        KeysCommand::List { file, alg } => {
            for key in admission::list_alg_at(&file, alg, admission::unix_now())? {
                println!("{key}");
            }
        }
        KeysCommand::ExportPem { file, out_dir } => {
            // One `--admission-key` argument per key, ready for
            // `pace-node gateway haproxy|kong`.
            for (kid, path) in admission::export_pems(&file, &out_dir)? {
                println!("--admission-key {kid}={}", path.display());
            }
        }
        KeysCommand::Retire { file, kid } => {
            admission::retire(&file, &kid)?;
            println!("retired key {kid} from {}", file.display());
        }
    }
    Ok(())
}

/// `pace-node audit verify`: 0 verified, 1 problems, 2 unreadable input.
fn audit(cmd: AuditCommand) -> ExitCode {
    let AuditCommand::Verify {
        file,
        jwks,
        ticket,
        device,
    } = cmd;
    let read = || -> anyhow::Result<(String, jsonwebtoken::jwk::JwkSet)> {
        let log = std::fs::read_to_string(&file)
            .with_context(|| format!("reading {}", file.display()))?;
        let keys = std::fs::read_to_string(&jwks)
            .with_context(|| format!("reading {}", jwks.display()))?;
        let keys = serde_json::from_str(&keys)
            .with_context(|| format!("{} is not a JWKS", jwks.display()))?;
        Ok((log, keys))
    };
    let (log, keys) = match read() {
        Ok(x) => x,
        Err(e) => {
            eprintln!("pace-node: {e:#}");
            return ExitCode::from(2);
        }
    };
    let query = device.map(|device| pace_node::audit::verify::DeviceQuery { ticket, device });
    let report = pace_node::audit::verify::verify(&log, &keys, query.as_ref());
    print!("{report}");
    if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn check_config(args: ServeArgs) -> anyhow::Result<()> {
    let config = args.into_config()?;
    println!(
        "configuration valid (node {}, listen {})",
        config.node_id, config.limits.listen
    );
    Ok(())
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = args.into_config()?;
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&config.limits.log))
        .with_writer(std::io::stderr)
        // Colours only on a terminal: journald and log files get plain text.
        .with_ansi(
            std::io::IsTerminal::is_terminal(&std::io::stderr())
                && std::env::var_os("NO_COLOR").is_none(),
        )
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(config.limits.listen)
            .await
            .with_context(|| format!("binding {}", config.limits.listen))?;
        let addr = listener.local_addr()?;
        println!("pace-node {} listening on http://{addr}", config.node_id);
        println!("  devices:  ws://{addr}/ws?device_id=<id>   (or header x-device-id)");
        println!("  notify:   POST http://{addr}/api/v1/notify   (Authorization: Bearer <service key>)");
        println!("  health:   http://{addr}/health   ready: http://{addr}/ready   metrics: http://{addr}/metrics");
        if config.service_key_generated {
            println!(
                "  service key (generated, set PACE_SERVICE_KEY to choose one): {}",
                config.service_key
            );
        }
        let shutdown = CancellationToken::new();
        tokio::spawn(signals(shutdown.clone()));
        pace_node::run(config, listener, shutdown).await?;
        Ok(())
    })
}

/// SIGTERM or SIGINT starts the drain; a second one exits at once.
async fn signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: draining"),
        _ = int.recv() => tracing::info!("SIGINT: draining"),
    }
    shutdown.cancel();
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::warn!("second signal: exiting without waiting for the drain");
    std::process::exit(130);
}
