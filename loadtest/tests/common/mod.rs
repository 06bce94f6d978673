//! What the loadtest integration tests share: running `edgepush-load` for its one-line JSON
//! report, and reading the report's fields.

// Each test binary uses its own part of this module.
#![allow(dead_code)]

use std::process::Command;

use serde_json::Value;

/// Runs `edgepush-load ARGS --json --timeout 60s EXTRA` and returns its report; panics with
/// its stderr if it fails or its last line is not JSON.
pub fn run_with(args: &[&str], extra: &[&str]) -> Value {
    let output = Command::new(env!("CARGO_BIN_EXE_edgepush-load"))
        .args(args)
        .args(["--json", "--timeout", "60s"])
        .args(extra)
        .output()
        .expect("run edgepush-load");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "edgepush-load {args:?} failed: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

/// `report[field]` as a count; panics if it is missing or not one.
pub fn u(report: &Value, field: &str) -> u64 {
    report[field]
        .as_u64()
        .unwrap_or_else(|| panic!("{field} missing or not a count in {report}"))
}

/// `report[field]` as a number; panics if it is missing or not one.
pub fn f(report: &Value, field: &str) -> f64 {
    report[field]
        .as_f64()
        .unwrap_or_else(|| panic!("{field} missing or not a number in {report}"))
}
