//! The `telepatch` command: thin glue from configuration to a running gateway.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use gateway::config::{Config, LogFormat, Overrides};

/// telepatch: patch Asterisk AudioSocket calls into a 48 kHz patchbay.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// TOML configuration file (built-in defaults when omitted; they bind loopback only).
    #[arg(long, short, global = true, env = "TELEPATCH_CONFIG")]
    config: Option<PathBuf>,
    /// AudioSocket listen address (overrides `audiosocket.listen`).
    #[arg(long, global = true, env = "TELEPATCH_LISTEN")]
    listen: Option<SocketAddr>,
    /// Most concurrent calls (overrides `audiosocket.max_calls`).
    #[arg(long, global = true, env = "TELEPATCH_MAX_CALLS")]
    max_calls: Option<usize>,
    /// WAV file looped to callers in the lobby (overrides `lobby.hold_music`).
    #[arg(long, global = true, env = "TELEPATCH_HOLD_MUSIC")]
    hold_music: Option<PathBuf>,
    /// Directory for recordings (overrides `recordings.dir`).
    #[arg(long, global = true, env = "TELEPATCH_RECORDINGS_DIR")]
    recordings_dir: Option<PathBuf>,
    /// Directory of the files routes and API clients may play (overrides `media.dir`).
    #[arg(long, global = true, env = "TELEPATCH_MEDIA_DIR")]
    media_dir: Option<PathBuf>,
    /// Log filter such as `info` or `telepatch=debug` (overrides `log.level`).
    #[arg(long, global = true, env = "TELEPATCH_LOG")]
    log_level: Option<String>,
    /// Log format (overrides `log.format`).
    #[arg(long, global = true, env = "TELEPATCH_LOG_FORMAT", value_enum)]
    log_format: Option<LogFormatArg>,
    /// HTTP API listen address (overrides `api.listen`).
    #[arg(long, global = true, env = "TELEPATCH_API_LISTEN")]
    api_listen: Option<SocketAddr>,
    /// Database URL, `sqlite://...` or `postgres://...` (overrides `database.url`).
    #[arg(long, global = true, env = "DATABASE_URL")]
    database_url: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Copy, Clone, Debug, ValueEnum)]
enum LogFormatArg {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the gateway until SIGINT or SIGTERM.
    Serve,
    /// Validate the configuration, print the effective settings and exit.
    CheckConfig,
    /// Manage API tokens (talks to the database directly).
    #[command(subcommand)]
    Token(gateway::cli::TokenCommand),
    /// List live calls (through a running gateway's API).
    Calls(gateway::cli::CallsArgs),
    /// Hang a live call up (through the API).
    Hangup(gateway::cli::HangupArgs),
    /// List, add or delete routes (through the API).
    #[command(subcommand)]
    Routes(gateway::cli::RoutesCommand),
    /// List, add or delete patches (through the API).
    #[command(subcommand)]
    Patch(gateway::cli::PatchCommand),
    /// Play an AoDNS broadcast from a DNS server to a WAV file or stdout, as the
    /// reference client does (a JSON report goes to stderr at the end).
    ListenDns(gateway::cli::ListenDnsArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let overrides = Overrides {
        listen: cli.listen,
        max_calls: cli.max_calls,
        hold_music: cli.hold_music.clone(),
        recordings_dir: cli.recordings_dir.clone(),
        media_dir: cli.media_dir.clone(),
        log_level: cli.log_level.clone(),
        log_format: cli.log_format.map(|f| match f {
            LogFormatArg::Text => LogFormat::Text,
            LogFormatArg::Json => LogFormat::Json,
        }),
        api_listen: cli.api_listen,
        database_url: cli.database_url.clone(),
    };
    let config = match Config::load(cli.config.as_deref(), &overrides) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("telepatch: {e}");
            return ExitCode::from(2);
        }
    };
    match cli.command {
        Command::CheckConfig => {
            match toml::to_string_pretty(&config) {
                Ok(text) => println!("# configuration is valid; effective settings:\n{text}"),
                Err(e) => println!("configuration is valid (cannot print it: {e})"),
            }
            ExitCode::SUCCESS
        }
        Command::Serve => report(serve(config)),
        Command::Token(command) => report(run_client(gateway::cli::token(command, config))),
        Command::Calls(args) => report(run_client(gateway::cli::calls(args, config))),
        Command::Hangup(args) => report(run_client(gateway::cli::hangup(args, config))),
        Command::Routes(command) => report(run_client(gateway::cli::routes(command, config))),
        Command::Patch(command) => report(run_client(gateway::cli::patch(command, config))),
        Command::ListenDns(args) => {
            let _logging = init_logging(&config);
            report(gateway::cli::listen_dns(args))
        }
    }
}

fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("telepatch: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_client(work: impl std::future::Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(work)
}

/// Log lines that may wait for the log writer thread; beyond them lines are dropped
/// (and counted) rather than blocking the thread that logs.
const LOG_QUEUE_LINES: usize = 65_536;

/// Logging to stderr through a writer thread of its own, so that a sink that stops
/// reading (a full disk under a log file, a stuck journald) never blocks the media,
/// session or API threads: lines beyond [`LOG_QUEUE_LINES`] waiting are dropped and
/// counted. The returned guard flushes what is queued when dropped, and reports drops.
fn init_logging(config: &Config) -> Logging {
    // hickory-server logs every DNS request at info; that is per packet, so it stays
    // at warn unless the filter names hickory itself.
    let level = if config.log.level.contains("hickory") {
        config.log.level.clone()
    } else {
        format!(
            "{},hickory_server=warn,hickory_proto=warn,hickory_net=warn",
            config.log.level
        )
    };
    let filter = tracing_subscriber::EnvFilter::new(&level);
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(LOG_QUEUE_LINES)
        .thread_name("telepatch-log")
        .finish(std::io::stderr());
    let dropped = writer.error_counter();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(ansi);
    match config.log.format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    Logging {
        _guard: guard,
        dropped,
    }
}

/// The log writer thread; flushes and says how many lines were dropped when dropped.
struct Logging {
    _guard: tracing_appender::non_blocking::WorkerGuard,
    dropped: tracing_appender::non_blocking::ErrorCounter,
}

impl Drop for Logging {
    fn drop(&mut self) {
        let dropped = self.dropped.dropped_lines();
        if dropped > 0 {
            eprintln!(
                "telepatch: {dropped} log lines were dropped while the log output was not read"
            );
        }
    }
}

fn serve(config: Config) -> anyhow::Result<()> {
    let _logging = init_logging(&config);
    if config.engine.lock_memory {
        // Before the runtime and the media threads start, so all of them are covered.
        match gateway::engine::driver::lock_process_memory() {
            Ok(()) => tracing::info!("process memory locked (mlockall)"),
            Err(e) => tracing::warn!(
                error = %e,
                "cannot lock the process's memory (needs CAP_IPC_LOCK or a larger \
                 RLIMIT_MEMLOCK); pages the media threads use may be paged out"
            ),
        }
    }
    raise_fd_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let running = gateway::app::start(config).await?;
        // Shut down (hang up, withdraw SAP announcements) even if the signal handler
        // failed.
        let waited = wait_for_signal().await;
        tracing::info!("shutting down: hanging up every call");
        running.shutdown().await?;
        tracing::info!("shutdown complete");
        waited
    })
}

/// Every call and API connection is a file descriptor: take all the hard limit allows
/// (the HTTP API's share of it is decided at start, see `gateway::net::fd_limit`).
fn raise_fd_limit() {
    let raised = gateway::net::fd_limit::raise_to_hard();
    let show = |limit: Option<u64>| limit.map_or_else(|| "unlimited".to_owned(), |n| n.to_string());
    match raised.error {
        None => tracing::info!(
            soft = %show(raised.after.soft),
            hard = %show(raised.after.hard),
            was = %show(raised.before.soft),
            "file-descriptor limit (RLIMIT_NOFILE)"
        ),
        Some(e) => tracing::warn!(
            error = %e,
            soft = %show(raised.after.soft),
            hard = %show(raised.after.hard),
            "cannot raise the file-descriptor limit to the hard limit"
        ),
    }
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result?,
        _ = term.recv() => {}
    }
    Ok(())
}
