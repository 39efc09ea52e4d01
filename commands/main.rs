//! The `wsgw` binary: parses the command line and hands each subcommand to its own module.
//! Every subcommand owns its options and a `run` that returns the process exit code.

mod alert_webhook;
mod exit;
mod generate;
mod kick;
mod loadtest;
mod nodes;
mod push;
mod secrets;
mod serve;
mod sessions;
mod token;
mod top;

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use wsgw::config::LogFormat;

/// wsgw — a WebSocket gateway in front of gRPC business backends.
#[derive(Parser)]
#[command(name = "wsgw", version, about, propagate_version = true, disable_help_subcommand = true)]
struct Cli {
    /// Log format (overrides `log.format`).
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Serve(serve::Args),
    Push(push::Args),
    Sessions(sessions::Args),
    Kick(kick::Args),
    Top(top::Args),
    AlertWebhook(alert_webhook::Args),
    Loadtest(Box<loadtest::Args>),
    Token(token::Args),
    #[command(hide = true)]
    GenerateDocs(generate::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve::run(args, cli.log_format),
        Command::Push(args) => push::run(args),
        Command::Sessions(args) => sessions::run(args),
        Command::Kick(args) => kick::run(args),
        Command::Top(args) => top::run(args),
        Command::AlertWebhook(args) => alert_webhook::run(args),
        Command::Loadtest(args) => loadtest::run(*args),
        Command::Token(args) => token::run(args),
        Command::GenerateDocs(args) => generate::run(args, Cli::command()),
    };
    result.unwrap_or_else(|e| {
        eprintln!("error: {e:#}");
        exit::no()
    })
}
