//! `vmove`, the operator CLI.
#![warn(missing_docs)]

mod args;
mod cmd_cluster;
mod cmd_docs;
mod cmd_guest;
mod cmd_host;
mod cmd_job;
mod cmd_lab;
mod cmd_migrate;
mod cmd_setup;
mod console;
mod ctx;
mod drain;
mod fleet_store;
mod oedacli;
mod out;
mod plot;
mod request;
#[cfg(test)]
mod testutil;

/// The oedacli language's lexer and parser (pure: one line to one command), for tools and
/// the fuzzer (`fuzz/`).
pub use oedacli::parse as oedacli_parse;

use std::process::ExitCode;

use clap::Parser;

/// Entry point of the `vmove` binary.
pub fn main() -> ExitCode {
    let cli = match args::Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { ExitCode::from(2) } else { ExitCode::SUCCESS };
            let _ = e.print();
            return code;
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("vmove: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let json = cli.json;
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let reported = e.is::<oedacli::Reported>();
            let msg = out::one_line(e);
            if json && !reported {
                println!("{}", serde_json::json!({ "ok": false, "error": msg }));
            }
            eprintln!("vmove: {msg}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: args::Cli) -> anyhow::Result<()> {
    let ctx = ctx::Ctx::new(cli.cluster.clone(), cli.json);
    match cli.command {
        args::Command::Lab(c) => cmd_lab::run(&ctx, c).await,
        args::Command::Host(c) => cmd_host::run(&ctx, c).await,
        args::Command::Guest(c) => cmd_guest::run(&ctx, c).await,
        args::Command::Migrate(a) => {
            let cluster = ctx.cluster().await?;
            let cmd = a.into_command(&cluster)?;
            cmd_migrate::run(&ctx, &cluster, cmd).await
        }
        args::Command::Job(c) => cmd_job::run(&ctx, c).await,
        args::Command::Cluster(c) => cmd_cluster::run(&ctx, c).await,
        args::Command::Oedacli(a) => oedacli::run(&ctx, a.script).await,
        args::Command::Completions { shell } => cmd_docs::completions(&ctx, shell),
        args::Command::Manpage { out } => cmd_docs::manpages(&ctx, out.as_deref()),
    }
}
