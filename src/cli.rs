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
    /// Signing keys.
    #[cfg(feature = "auth")]
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Block or unblock users.
    #[cfg(feature = "auth")]
    #[command(subcommand)]
    Users(UsersCommand),
    /// Transcription: the offline model, and the dead letters (run those with the server
    /// stopped: it holds the bite store).
    #[cfg(feature = "bites")]
    #[command(subcommand)]
    Transcription(TranscriptionCommand),
}

#[cfg(feature = "bites")]
#[derive(Debug, Subcommand)]
enum TranscriptionCommand {
    /// Print the jobs given up on, one JSON object per line, with the last error.
    DeadLetters,
    /// Put every dead letter back in the queue, due now with no attempts.
    Retry,
    /// Transcribe an Ogg Opus file with the configured engine and print the transcript (JSON):
    /// a check that the engine and its model work.
    Transcribe {
        /// An Ogg Opus file (a stored bite, or `opusenc` output).
        file: PathBuf,
    },
    /// Convert a Whisper model in CTranslate2's format (faster-whisper's: a directory with
    /// model.bin and vocabulary.txt) into the ggml file the whisper engine loads.
    ImportModel {
        /// The CTranslate2 model directory.
        dir: PathBuf,
        /// Where to write [default: transcription.whisper.model_path, or
        /// <data_dir>/models/whisper.bin].
        #[arg(long, value_name = "PATH")]
        out: Option<PathBuf>,
    },
}

#[cfg(feature = "auth")]
#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Add a new signing key to <data_dir>/keys; running servers switch to it at their next
    /// rescan and keep publishing the old one until its tokens have expired.
    Rotate,
}

#[cfg(feature = "auth")]
#[derive(Debug, Subcommand)]
enum UsersCommand {
    /// Refuse the user's logins and end their sessions (within auth.revocation_sync_secs).
    Block { user_id: String },
    /// Let the user log in again.
    Unblock { user_id: String },
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
    if let Err(err) = telemetry::init_logging(&config.telemetry, !matches!(command, Command::Serve))
    {
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
            #[cfg(feature = "auth")]
            Command::Keys(KeysCommand::Rotate) => rotate_keys(&config),
            #[cfg(feature = "auth")]
            Command::Users(command) => users(&config, command).await,
            #[cfg(feature = "bites")]
            Command::Transcription(command) => transcription(&config, command).await,
            Command::Serve | Command::Config => serve(config, services).await,
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

#[cfg(feature = "auth")]
fn rotate_keys(config: &Config) -> Result<(), AnyError> {
    use crate::platform::clock::Clock;
    use crate::services::auth::keys;
    if config.auth.keys.private_key_path.is_some() {
        return Err("auth.keys.private_key_path is set: replace that file to change keys".into());
    }
    let kid = keys::rotate(
        &config.server.data_dir,
        config.auth.keys.algorithm,
        &Clock::system(),
    )?;
    println!("{kid}");
    Ok(())
}

#[cfg(feature = "bites")]
async fn transcription(config: &Config, command: TranscriptionCommand) -> Result<(), AnyError> {
    use crate::platform::clock::Clock;
    use crate::services::bites::store::{BiteStore as _, SledStore};
    use crate::services::bites::transcription::{self, import};
    if let TranscriptionCommand::Transcribe { file } = &command {
        let engine = transcription::engine(&config.transcription, &config.server.data_dir)?
            .ok_or("transcription is off (the log says why)")?;
        let ogg = std::fs::read(file).map_err(|err| format!("{}: {err}", file.display()))?;
        let started = std::time::Instant::now();
        let transcript = engine
            .transcribe(ogg.into(), &config.transcription.language)
            .await?;
        println!("{}", serde_json::to_string_pretty(&transcript)?);
        eprintln!("{:.3} s", started.elapsed().as_secs_f64());
        return Ok(());
    }
    if let TranscriptionCommand::ImportModel { dir, out } = command {
        let out =
            out.unwrap_or_else(|| config.transcription.whisper_model(&config.server.data_dir));
        let started = std::time::Instant::now();
        let imported = import::import_ct2(&dir, &out)?;
        println!(
            "{}: {} tensors, {}+{} layers, {} tokens, {} bytes, in {:.1} s",
            out.display(),
            imported.tensors,
            imported.layers.0,
            imported.layers.1,
            imported.vocabulary,
            imported.bytes,
            started.elapsed().as_secs_f64()
        );
        return Ok(());
    }
    let dir = config.server.data_dir.join("bites");
    let store = SledStore::open(&dir).map_err(|err| {
        format!(
            "opening {} (is beep running? stop it first): {err}",
            dir.display()
        )
    })?;
    match command {
        TranscriptionCommand::DeadLetters => {
            for job in store.dead_letters(usize::MAX)? {
                println!("{}", serde_json::to_string(&job)?);
            }
        }
        TranscriptionCommand::Retry => {
            let now = u64::try_from(Clock::system().now_millis()).unwrap_or_default();
            println!("{} job(s) queued again", store.requeue_dead(now)?);
        }
        TranscriptionCommand::ImportModel { .. } | TranscriptionCommand::Transcribe { .. } => {}
    }
    Ok(())
}

#[cfg(feature = "auth")]
async fn users(config: &Config, command: UsersCommand) -> Result<(), AnyError> {
    use crate::platform::clock::Clock;
    use crate::services::auth::sessions::Sessions;
    let db = Db::open(&config.database, &config.server.data_dir).await?;
    db.migrate("auth").await?;
    let sessions = Sessions::new(
        db.connection().clone(),
        config.auth.refresh_token_ttl_secs,
        Clock::system(),
    );
    match command {
        UsersCommand::Block { user_id } => {
            sessions.block(&user_id).await?;
            let ended = sessions.revoke_user(&user_id, "blocked").await?;
            announce_block(config, &user_id).await;
            println!("{user_id} blocked; {} session(s) ended", ended.len());
        }
        UsersCommand::Unblock { user_id } => {
            let was = sessions.unblock(&user_id).await?;
            println!(
                "{user_id} {}",
                if was { "unblocked" } else { "was not blocked" }
            );
        }
    }
    db.close().await;
    Ok(())
}

/// Tells running servers on a shared bus (NATS) to end the user's streams and sockets now;
/// without one, or if it does not answer, their revocation sync does it within
/// `auth.revocation_sync_secs`.
#[cfg(feature = "auth")]
async fn announce_block(config: &Config, user_id: &str) {
    use crate::platform::bus::Bus;
    use crate::platform::clock::Clock;
    use crate::platform::sessions::UserBlocked;
    const ANNOUNCE_WITHIN: std::time::Duration = std::time::Duration::from_secs(5);
    let announce = async {
        let bus = Bus::open(&config.bus, Clock::system()).await?;
        let event = UserBlocked {
            user: user_id.to_owned(),
        };
        bus.publish(event).await?;
        bus.written().await
    };
    match tokio::time::timeout(ANNOUNCE_WITHIN, announce).await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => tracing::warn!(error = %err, "cannot announce the block on the bus"),
        Err(_) => tracing::warn!("the bus did not take the block within {ANNOUNCE_WITHIN:?}"),
    }
}
