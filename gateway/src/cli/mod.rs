//! The operator's subcommands: tokens (straight to the database), calls, routes and
//! patches through a running gateway's REST API, and `listen-dns`, an AoDNS listener.

use api::store::{Scope, open_store};
use clap::{Args, Subcommand, ValueEnum};

use crate::config::Config;

mod listen_dns;
pub use listen_dns::{ListenDnsArgs, ListenReport, listen_dns};

/// `telepatch token ...`
#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Create a token and print it (once: only its hash is stored).
    Create {
        /// Who or what uses it.
        #[arg(long)]
        name: String,
        /// What it may do.
        #[arg(long, value_enum, default_value = "read")]
        scope: ScopeArg,
    },
    /// List tokens (names and scopes, never secrets).
    List,
    /// Revoke a token.
    Revoke {
        /// Its name.
        name: String,
    },
}

/// A token scope on the command line.
#[derive(Copy, Clone, Debug, ValueEnum)]
pub enum ScopeArg {
    /// Read-only requests.
    Read,
    /// Everything.
    Admin,
}

/// Runs a `token` subcommand against the configured database.
pub async fn token(command: TokenCommand, config: Config) -> anyhow::Result<()> {
    let store = open_store(&config.database_url()).await?;
    match command {
        TokenCommand::Create { name, scope } => {
            let scope = match scope {
                ScopeArg::Read => Scope::Read,
                ScopeArg::Admin => Scope::Admin,
            };
            let created = store.create_token(&name, scope).await?;
            println!("{}", created.token);
            eprintln!("token {name:?} ({scope}) created; it is shown only this once");
        }
        TokenCommand::List => {
            for token in store.list_tokens().await? {
                let last = token
                    .last_used_at
                    .map_or_else(|| "never".to_owned(), |t| t.to_rfc3339());
                println!(
                    "{:<24} {:<6} created {}  last used {}",
                    token.name,
                    token.scope,
                    token.created_at.to_rfc3339(),
                    last
                );
            }
        }
        TokenCommand::Revoke { name } => {
            store.revoke_token(&name).await?;
            eprintln!("token {name:?} revoked (gateways stop accepting it within a minute)");
        }
    }
    store.close().await;
    Ok(())
}

/// Where and how to reach a running gateway's API.
#[derive(Args, Debug, Clone)]
pub struct ApiClientArgs {
    /// Base URL of the API (default: `http://` + `api.listen` of the configuration).
    #[arg(long, env = "TELEPATCH_API_URL")]
    pub api_url: Option<String>,
    /// API token (`telepatch token create`).
    #[arg(long, env = "TELEPATCH_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Print the API's JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `telepatch calls`
#[derive(Args, Debug)]
pub struct CallsArgs {
    /// API access.
    #[command(flatten)]
    pub api: ApiClientArgs,
}

/// `telepatch hangup UUID`
#[derive(Args, Debug)]
pub struct HangupArgs {
    /// The call's UUID.
    pub uuid: uuid::Uuid,
    /// API access.
    #[command(flatten)]
    pub api: ApiClientArgs,
}

/// `telepatch routes ...`
#[derive(Subcommand, Debug)]
pub enum RoutesCommand {
    /// List routes.
    List {
        /// API access.
        #[command(flatten)]
        api: ApiClientArgs,
    },
    /// Add a route given as JSON (text, or `@file.json`).
    Add {
        /// The route, e.g. `{"name":"desk","match":{"uuid_prefix":"c0de"},"actions":[{"action":"conference","name":"desk"}]}`.
        route: String,
        /// API access.
        #[command(flatten)]
        api: ApiClientArgs,
    },
    /// Delete a route.
    Delete {
        /// Its name.
        name: String,
        /// API access.
        #[command(flatten)]
        api: ApiClientArgs,
    },
}

/// `telepatch patch ...`
#[derive(Subcommand, Debug)]
pub enum PatchCommand {
    /// List patches.
    List {
        /// API access.
        #[command(flatten)]
        api: ApiClientArgs,
    },
    /// Connect an output port to an input port.
    Add {
        /// Output port, e.g. `player:hold.out`.
        source: String,
        /// Input port, e.g. `call:<uuid>.ear`.
        sink: String,
        /// Gain in dB.
        #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
        gain_db: f32,
        /// Store it and restore it at start-up.
        #[arg(long)]
        persistent: bool,
        /// API access.
        #[command(flatten)]
        api: ApiClientArgs,
    },
    /// Remove a patch.
    Delete {
        /// Its id.
        id: u64,
        /// API access.
        #[command(flatten)]
        api: ApiClientArgs,
    },
}

/// Runs `telepatch calls`.
pub async fn calls(args: CallsArgs, config: Config) -> anyhow::Result<()> {
    client::calls(args, &config).await
}

/// Runs `telepatch hangup`.
pub async fn hangup(args: HangupArgs, config: Config) -> anyhow::Result<()> {
    client::hangup(args, &config).await
}

/// Runs `telepatch routes ...`.
pub async fn routes(command: RoutesCommand, config: Config) -> anyhow::Result<()> {
    client::routes(command, &config).await
}

/// Runs `telepatch patch ...`.
pub async fn patch(command: PatchCommand, config: Config) -> anyhow::Result<()> {
    client::patch(command, &config).await
}

mod client;
