//! `edgepush-load`: the load generator bundled with edgepush. See `loadtest/README.md`.

mod backend;
mod child;
mod cli;
mod client;
mod deflate;
mod direct;
mod engine;
mod floor;
mod parent;
mod publish;
mod report;
mod scale;
mod scenarios;
mod stats;
mod sys;

use clap::Parser;

fn main() {
    let mut args = std::env::args_os();
    if args.nth(1).is_some_and(|a| a == "--child") {
        let spec = std::env::var(child::SPEC_ENV)
            .map_err(|e| e.to_string())
            .and_then(|s| serde_json::from_str(&s).map_err(|e| e.to_string()));
        match spec {
            Ok(spec) => child::run(spec),
            Err(e) => {
                eprintln!("edgepush-load: --child is internal (bad or missing spec: {e})");
                std::process::exit(2);
            }
        }
    }
    let cli = cli::Cli::parse();
    if let cli::Cmd::Floor {
        sockets,
        passes,
        size,
    } = cli.cmd
    {
        std::process::exit(report_floor(sockets, passes, size, cli.common.json));
    }
    if let cli::Cmd::Backend {
        listen,
        threads,
        duration,
    } = cli.cmd
    {
        let opts = backend::Options {
            listen,
            threads,
            duration,
        };
        std::process::exit(backend::run(&opts, cli.common.json));
    }
    match parent::run(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("edgepush-load: error: {e}");
            std::process::exit(1);
        }
    }
}

/// Runs `floor` and prints what it found; returns the exit code.
fn report_floor(sockets: usize, passes: usize, size: usize, json: bool) -> i32 {
    // Two descriptors per pair.
    let limit = sys::raise_nofile_limit();
    if (sockets as u64).saturating_mul(2) + 64 > limit {
        eprintln!(
            "edgepush-load: error: floor: {sockets} socket pairs need {} descriptors; the \
             open-files limit is {limit} (at most {} pairs)",
            sockets * 2,
            limit.saturating_sub(64) / 2
        );
        return 1;
    }
    match floor::measure(sockets, passes, size) {
        Ok(found) => {
            let median = found.median_us();
            eprintln!(
                "loopback TCP send of {} B to {} sockets: median {median:.2} µs per send over {} \
                 passes; {} sends take at least {:.1} ms of one core",
                found.size,
                found.sockets,
                found.per_send_us.len(),
                found.sockets,
                median * found.sockets as f64 / 1e3
            );
            if json {
                let line = serde_json::json!({
                    "scenario": "floor",
                    "sockets": found.sockets,
                    "size": found.size,
                    "per_send_us_median": median,
                    "per_send_us": found.per_send_us,
                });
                println!("{line}");
            }
            0
        }
        Err(e) => {
            eprintln!("edgepush-load: error: floor: {e}");
            1
        }
    }
}
