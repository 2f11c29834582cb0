//! `keyward simulate-leak`: runs `keyward_engine::simulate` on a throwaway SQLite store in a
//! temporary directory and prints what detection saw and when.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use keyward_engine::anomaly::Thresholds;
use keyward_engine::simulate::{LeakScenario, describe, simulate_leak};
use keyward_store::SqliteStore;
use time::OffsetDateTime;

use crate::cli::anomaly::SimulateLeakArgs;

pub async fn run(args: &SimulateLeakArgs) -> anyhow::Result<ExitCode> {
    let scenario = LeakScenario {
        baseline_minutes: args.baseline_minutes,
        baseline_per_second: args.baseline_rps,
        baseline_ips: args.baseline_ips,
        spike_per_second: args.spike_rps,
        spike_ips: args.spike_ips,
        max_spike_seconds: args.max_spike_seconds,
        action: args.on_anomaly.action(),
        thresholds: Thresholds {
            spike_factor: args.anomaly_spike_factor,
            ..Thresholds::default()
        },
    };
    scenario.validate().context("invalid scenario")?;
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let store = SqliteStore::open(dir.path())
        .await
        .context("opening the temporary store")?;
    let started = std::time::Instant::now();
    // Simulated time starts at the real time only so the audit entries look plausible; the
    // run itself never reads the real clock.
    let report = simulate_leak(Arc::new(store), OffsetDateTime::now_utc(), &scenario)
        .await
        .context("running the simulation")?;
    println!(
        "baseline: {} min at {} req/s from {} addresses ({} requests): {} anomalies",
        args.baseline_minutes,
        args.baseline_rps,
        args.baseline_ips,
        report.baseline_requests,
        report.baseline_anomalies
    );
    println!(
        "leak: +{} req/s from {} new addresses, for up to {} s",
        args.spike_rps, args.spike_ips, args.max_spike_seconds
    );
    let code = match &report.detection {
        Some(d) => {
            println!(
                "detected: {} ({}) {:.1} s and {} requests after the leak began; action: {}{}",
                d.outcome.kind.as_str(),
                describe(d.outcome.kind),
                d.seconds_after_spike,
                d.requests_after_spike,
                d.outcome.action.as_str(),
                if d.outcome.braked {
                    " (safety brake)"
                } else {
                    ""
                }
            );
            println!("detail: {}", d.outcome.detail);
            ExitCode::SUCCESS
        }
        None => {
            println!("not detected within {} s", args.max_spike_seconds);
            ExitCode::from(3)
        }
    };
    println!(
        "anomalies during the leak: {}",
        report.spike_anomalies.len()
    );
    println!("the usual caller now gets: {}", report.code_after.as_str());
    println!(
        "(simulated in {:.2} s of real time)",
        started.elapsed().as_secs_f64()
    );
    Ok(code)
}
