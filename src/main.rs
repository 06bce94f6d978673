//! The `edgepush` binary: flags → configuration → one event-loop thread per core.

use std::process::ExitCode;

use clap::Parser;
use log::{info, warn};

use edgepush::config::{Args, Config};
use edgepush::server::{self, Server};

fn main() -> ExitCode {
    let config = match Config::from_args(Args::parse()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("edgepush: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(&config);

    let open_files = server::raise_open_files_limit().unwrap_or_else(|e| {
        warn!("could not raise the open-files limit: {e}");
        server::open_files_limit()
    });
    let server = match Server::start_handling_signals(&config) {
        Ok(server) => server,
        Err(e) => {
            // The error names what failed: a listener and its address, the TLS files, Redis.
            eprintln!("edgepush: {e}");
            return ExitCode::from(1);
        }
    };
    info!(
        "edgepush {} listening on {}",
        env!("CARGO_PKG_VERSION"),
        server.local_addr()
    );
    info!("push API on http://{}", server.api_addr());
    info!("configuration:\n{}", config.render_summary());
    if config.jwt_secret.is_none() {
        warn!("!!! OPEN MODE: no --jwt-secret. Anyone can connect as any ?user=, subscribe to");
        warn!("!!! any channel and publish anywhere. For development only: set --jwt-secret.");
    }
    info!(
        "connection ceiling {} (open-files limit {open_files})",
        server.max_connections()
    );
    if server.max_connections() < config.max_connections {
        warn!(
            "--max-connections {} is above what the open-files limit allows; the ceiling is {}",
            config.max_connections,
            server.max_connections()
        );
    }
    server.wait();
    info!("stopped");
    ExitCode::SUCCESS
}

/// Logs go to stderr; `RUST_LOG`, when set, overrides `--log` with its finer filters.
fn init_logging(config: &Config) {
    let mut builder = env_logger::Builder::new();
    builder.filter_level(config.log_level);
    if let Ok(filters) = std::env::var("RUST_LOG") {
        builder.parse_filters(&filters);
    }
    builder.format_timestamp_millis().init();
}
