//! `vmoved`, the host agent: runs guests as QEMU processes, owns the host's taps and
//! volumes, keeps a crash-safe journal and serves the mTLS API.
#![warn(missing_docs)]

mod guests;
mod inventory;
mod jobs;
mod journal;
mod live;
mod reconcile;
mod server;
mod steps;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;

/// `vmoved` arguments.
#[derive(Parser, Debug)]
#[command(name = "vmoved", version, about = "vmove host agent")]
struct Args {
    /// Agent configuration file.
    #[arg(long, env = "VMOVED_CONFIG")]
    config: PathBuf,
}

/// Entry point of the `vmoved` binary.
pub fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_target(false)
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("vmoved: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vmoved: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let cfg = vmove_model::AgentConfig::load(&args.config)?;
    std::fs::create_dir_all(&cfg.state_dir).with_context(|| format!("create {}", cfg.state_dir.display()))?;
    std::fs::create_dir_all(&cfg.run_dir).with_context(|| format!("create {}", cfg.run_dir.display()))?;
    let agent = Arc::new(guests::Agent::new(cfg.clone()).await?);
    agent.reconcile().await?;
    let jobs = jobs::Jobs::open(agent.clone())?;
    server::serve(agent, jobs, &cfg).await
}
