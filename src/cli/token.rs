//! `linesight token`: make, list and revoke the API tokens of a station's data folder.
//!
//! Works beside a running station: tokens live in `<data_dir>/tokens.json`, which the station
//! re-reads when it changes. The secret is printed once and never stored.

use std::path::PathBuf;

use anyhow::Context;

use linesight::config::StationConfig;
use linesight::serve::auth::{Role, Tokens};

#[derive(clap::Subcommand)]
pub enum Token {
    /// Make a token and print it (once).
    Create {
        /// What the holder may do: operator, engineer, mes-client or admin.
        #[arg(long)]
        role: Role,
        /// Who or what holds it (shown in the audit log): letters, digits, - _ . @
        #[arg(long)]
        name: String,
        #[command(flatten)]
        place: DataPlace,
    },
    /// List the tokens (never their secrets).
    List {
        #[command(flatten)]
        place: DataPlace,
    },
    /// Revoke a token by id; it stops working at once.
    Revoke {
        id: String,
        #[command(flatten)]
        place: DataPlace,
    },
}

/// Which station's data folder.
#[derive(clap::Args)]
pub struct DataPlace {
    /// The station's config file (its `station.data_dir` holds the tokens).
    #[arg(long, default_value = "config/simulated-line.toml")]
    config: PathBuf,
    /// The data folder itself, instead of the config's.
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

impl DataPlace {
    pub fn resolve(&self) -> anyhow::Result<PathBuf> {
        match &self.data_dir {
            Some(dir) => Ok(dir.clone()),
            None => Ok(StationConfig::load(&self.config)?.data_dir),
        }
    }
}

impl Token {
    pub fn run(self) -> anyhow::Result<()> {
        match self {
            Token::Create { role, name, place } => {
                let dir = place.resolve()?;
                std::fs::create_dir_all(&dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
                let tokens = Tokens::open(&dir, None)?;
                let made = tokens.create(&name, role, "cli")?;
                eprintln!(
                    "token {} for {} ({}) made; it is shown once, keep it safe:",
                    made.info.id, made.info.name, made.info.role
                );
                println!("{}", made.token);
            }
            Token::List { place } => {
                let tokens = Tokens::open(&place.resolve()?, None)?;
                println!(
                    "{:<10} {:<12} {:<24} {:<26} revoked",
                    "id", "role", "name", "created"
                );
                for t in tokens.list()? {
                    println!(
                        "{:<10} {:<12} {:<24} {:<26} {}",
                        t.id,
                        t.role.as_str(),
                        t.name,
                        t.created_at.to_rfc3339(),
                        t.revoked_at.map_or("-".into(), |r| r.to_rfc3339())
                    );
                }
            }
            Token::Revoke { id, place } => {
                let tokens = Tokens::open(&place.resolve()?, None)?;
                let revoked = tokens.revoke(&id, "cli")?;
                println!("revoked {} ({})", revoked.id, revoked.name);
            }
        }
        Ok(())
    }
}
