//! The `keyward` binary: parses the command line and dispatches. `serve`, `gateway` and
//! `migrate` run a node or its store; `simulate-leak` runs in-process; the other commands are
//! clients of a running server (`keyward::client`, one module per command group). Errors print
//! as one line (`error: ...`) with exit status 1; `verify` exits 3 when the key is not valid,
//! and `audit verify` exits 3 when the chain is broken.

use keyward::cli::anomaly::AnomalyArgs;
use keyward::cli::{Cli, Command};
use keyward::{client, gateway, serve, simulate, store};

use std::process::ExitCode;

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches};

/// mimalloc: the edge allocates a few small objects per request (headers, strings); glibc's
/// allocator showed up as about a tenth of the gateway's CPU profile under load.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // A panic message may quote request data; print only where it happened.
    std::panic::set_hook(Box::new(|info| {
        let location = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        eprintln!(
            "keyward: internal error (panic){location}; the message is withheld because it may contain request data"
        );
    }));
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.format(&mut Cli::command()).exit(),
    };
    // The gateway's anomaly settings given as flags or variables win over its file's.
    let anomaly_given: Vec<&'static str> = matches
        .subcommand_matches("gateway")
        .map(|m| {
            AnomalyArgs::IDS
                .into_iter()
                .filter(|id| {
                    matches!(
                        m.value_source(id),
                        Some(ValueSource::CommandLine | ValueSource::EnvVariable)
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    // KEYWARD_WORKER_THREADS sizes the async runtime (default: one thread per core).
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = std::env::var("KEYWARD_WORKER_THREADS")
        .ok()
        .and_then(|t| t.parse::<usize>().ok())
        .filter(|t| *t > 0)
    {
        builder.worker_threads(threads);
    }
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli, &anomaly_given)) {
        Ok(code) => code,
        // A closed pipe (`keyward audit list | head`) is the reader's choice, not a failure.
        Err(e)
            if e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) =>
        {
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {}", keyward_core::redact::redact(&format!("{e:#}")));
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli, anomaly_given: &[&str]) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve(args) => serve::run(args).await.map(|()| ExitCode::SUCCESS),
        Command::Gateway(args) => gateway::run(
            &args.config,
            args.store.as_deref(),
            args.redis.config(),
            args.anomaly,
            |id| anomaly_given.contains(&id),
            &args.traces,
        )
        .await
        .map(|()| ExitCode::SUCCESS),
        Command::Migrate(args) => {
            store::migrate(&args.store).await?;
            println!("keyward: the store's schema is up to date");
            Ok(ExitCode::SUCCESS)
        }
        Command::Keys(cmd) => client::keys::run(cmd).await,
        Command::Verify(args) => client::verify::run(args).await,
        Command::Audit(cmd) => client::audit::run(cmd).await,
        Command::Root(cmd) => client::root::run(cmd).await,
        Command::Plans(cmd) => client::plans::run(cmd).await,
        Command::Usage(cmd) => client::usage::run(cmd).await,
        Command::SimulateLeak(args) => simulate::run(&args).await,
    }
}
