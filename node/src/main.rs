//! `geocache-node`: runs one cache node until SIGTERM or Ctrl-C.

use clap::Parser;
use geocache_node::config::{Flags, LogFormat};

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => tracing::info!("sigterm received; shutting down"),
                _ = tokio::signal::ctrl_c() => tracing::info!("interrupt received; shutting down"),
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn main() -> std::process::ExitCode {
    let mut flags = Flags::parse();
    if let Some(geocache_node::config::Command::Fleet(args)) = flags.command.take() {
        init_logging(flags.log_format);
        return geocache_node::fleet::main(args);
    }
    let log_format = flags.log_format;
    let config = match flags.validate() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("geocache-node: invalid configuration: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    init_logging(log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("geocache-node: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let node = match geocache_node::spawn_node(config).await {
            Ok(node) => node,
            Err(e) => {
                tracing::error!(error = %e, "cannot start the node");
                return std::process::ExitCode::FAILURE;
            }
        };
        wait_for_signal().await;
        node.shutdown().await;
        tracing::info!("stopped");
        std::process::ExitCode::SUCCESS
    })
}
