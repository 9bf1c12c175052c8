//! The `beep` command line, shared by the all-in-one binary and the per-service binaries
//! (which pass a smaller service set).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::app::{self, Hosting};
use crate::config::{Config, Overrides};
use crate::platform::db::Db;
use crate::platform::telemetry;

#[derive(Debug, Parser)]
#[command(version, about = "Beep: a self-hostable voice-messaging backend")]
struct Cli {
    /// Configuration file [default: ./config.toml when it exists].
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Address to listen on (overrides server.listen).
    #[arg(long, global = true, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Directory for the embedded backends' files (overrides server.data_dir).
    #[arg(long, global = true, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the API (the default).
    Serve,
    /// Apply pending database migrations of the services in this binary, then exit.
    Migrate,
    /// Print the merged configuration, secrets masked, then exit.
    Config,
}

/// Runs the command line for a binary hosting `services`.
pub fn main(services: &[&str]) -> ExitCode {
    let cli = Cli::parse();
    let overrides = Overrides {
        listen: cli.listen,
        data_dir: cli.data_dir,
    };
    let config = match Config::load(cli.config.as_deref(), &overrides) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("beep: {err}");
            return ExitCode::from(2);
        }
    };
    let command = cli.command.unwrap_or(Command::Serve);
    if let Command::Config = command {
        return match config.to_masked_toml() {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(err) => fail(&err),
        };
    }
    if let Err(err) = telemetry::init_logging(&config.telemetry) {
        eprintln!("beep: {err}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => return fail(&err),
    };
    let result = runtime.block_on(async {
        match command {
            Command::Migrate => migrate(&config, services).await,
            _ => serve(config, services).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => fail(err.as_ref()),
    }
}

fn fail(err: &dyn std::error::Error) -> ExitCode {
    let chain = crate::platform::http::error::ErrorChain(err);
    tracing::error!(error = %chain, "beep failed");
    eprintln!("beep: {chain}");
    ExitCode::FAILURE
}

type AnyError = Box<dyn std::error::Error + Send + Sync>;

async fn serve(config: Config, services: &[&str]) -> Result<(), AnyError> {
    let app = app::start(
        config,
        services,
        Hosting {
            handle_signals: true,
            ..Hosting::default()
        },
    )
    .await?;
    app.run().await?;
    Ok(())
}

async fn migrate(config: &Config, services: &[&str]) -> Result<(), AnyError> {
    let db = Db::open(&config.database, &config.server.data_dir).await?;
    for service in services {
        let applied = db.migrate(service).await?;
        println!("{service}: {applied} migration(s) applied");
    }
    db.close().await;
    Ok(())
}
