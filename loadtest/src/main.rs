//! `edgepush-load`: the load generator bundled with edgepush. See `loadtest/README.md`.

mod child;
mod cli;
mod parent;
mod publish;
mod report;
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
    match parent::run(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("edgepush-load: error: {e}");
            std::process::exit(1);
        }
    }
}
