//! Who may do what: API tokens, roles, and the sign-in for browsers.
//!
//! A token is `lst_<id>_<secret>`: the id (8 hex digits) finds its entry, the secret (64 hex
//! digits, 256 random bits) is checked against an argon2id hash. Only hashes are kept, in
//! `<data_dir>/tokens.json` (mode 0600, written atomically); the secret is shown once, when
//! made. The file is re-read when it changes, so `linesight token create` on the same box
//! works while the station runs, and a revoked token stops working at once. A token checked
//! once is remembered (by its SHA-256, in memory) so a busy client does not pay argon2 on
//! every request.
//!
//! `LINESIGHT_ADMIN_TOKEN`, from before roles existed, still works: it is an admin credential
//! from the environment, never written anywhere.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use chrono::{DateTime, Utc};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// What a credential may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Sees verdicts, records, images, the live page and metrics; acknowledges and shelves
    /// alarms.
    Operator,
    /// An operator who also labels parts, changes models, suppresses alarms and takes them
    /// out of service.
    Engineer,
    /// The plant MES: reads and pulls records, acknowledges them, pushes work orders.
    MesClient,
    /// Everything, including tokens and the audit log.
    Admin,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Operator, Role::Engineer, Role::MesClient, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Operator => "operator",
            Role::Engineer => "engineer",
            Role::MesClient => "mes-client",
            Role::Admin => "admin",
        }
    }

    /// Whether this role may do `action`.
    pub fn may(self, action: Permission) -> bool {
        use Permission::*;
        match self {
            Role::Admin => true,
            Role::Operator => matches!(action, Read | RespondToAlarms | Flag),
            Role::Engineer => matches!(
                action,
                Read | Pull
                    | Label
                    | Flag
                    | ChangeModels
                    | RespondToAlarms
                    | AlarmService
                    | PushSensors
            ),
            Role::MesClient => matches!(action, Read | Pull | WorkOrders | PushSensors),
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Role, String> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| {
                format!("unknown role `{s}`; one of operator, engineer, mes-client, admin")
            })
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Groups of routes, each allowed to some roles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Permission {
    /// Station state, records, images, the live page, the live stream, metrics.
    Read,
    /// The MES pull and its acknowledgements.
    Pull,
    /// Labelling parts, and the labelling queue and page.
    Label,
    /// Flagging a verdict as wrong (people on the line, not systems).
    Flag,
    /// Promote, roll back, shadow.
    ChangeModels,
    /// Releasing, starting and completing work orders.
    WorkOrders,
    /// Pushing line sensor samples (gateways, historians).
    PushSensors,
    /// Acknowledging, shelving and unshelving alarms (operators and above).
    RespondToAlarms,
    /// Suppressing alarms by design and taking them out of service (engineers and above).
    AlarmService,
    /// Tokens and the audit log.
    Admin,
}

impl Permission {
    pub const ALL: [Permission; 10] = [
        Permission::Read,
        Permission::Pull,
        Permission::Label,
        Permission::Flag,
        Permission::ChangeModels,
        Permission::WorkOrders,
        Permission::PushSensors,
        Permission::RespondToAlarms,
        Permission::AlarmService,
        Permission::Admin,
    ];
}

/// Who is asking, and what they may do: the pages show only what the role can use.
#[derive(Debug, Serialize)]
pub struct WhoAmI {
    pub name: String,
    pub role: Role,
    pub may: Vec<Permission>,
}

/// `GET /api/v1/whoami`.
pub(super) async fn whoami(axum::Extension(who): axum::Extension<Principal>) -> axum::Json<WhoAmI> {
    axum::Json(WhoAmI {
        may: Permission::ALL
            .into_iter()
            .filter(|p| who.role.may(*p))
            .collect(),
        name: who.name,
        role: who.role,
    })
}

/// Who made a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The token's name (a person or a system), as the audit log shows it.
    pub name: String,
    pub role: Role,
    /// The token's id (`env` for `LINESIGHT_ADMIN_TOKEN`).
    pub token_id: String,
}

impl Principal {
    /// The audit entry of `action` on `target` by this principal.
    pub fn audit(&self, action: &str, target: &str) -> crate::record::AuditRecord {
        crate::record::AuditRecord {
            actor: self.name.clone(),
            role: self.role.as_str().into(),
            action: action.into(),
            target: target.into(),
        }
    }
}

/// Why a token operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("token file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("token file {path} is not valid: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("hashing the token failed: {0}")]
    Hash(String),
    #[error(
        "a token name must be 1 to 64 characters of letters, digits, '-', '_', '.', '@'; got {0:?}"
    )]
    BadName(String),
    #[error("no token with id {0}")]
    UnknownId(String),
}

/// One token as kept on disk: never the secret, only its hash.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TokenEntry {
    pub id: String,
    pub name: String,
    pub role: Role,
    /// argon2id PHC string of the secret.
    pub hash: String,
    pub created_at: DateTime<Utc>,
    /// Who made it: a principal's name, or `cli` for `linesight token create`.
    pub created_by: String,
    #[serde(default)]
    pub revoked_at: Option<DateTime<Utc>>,
    /// Who revoked it: a principal's name, or `cli`.
    #[serde(default)]
    pub revoked_by: Option<String>,
}

impl TokenEntry {
    /// The entry without its hash, for listings.
    pub fn public(&self) -> TokenInfo {
        TokenInfo {
            id: self.id.clone(),
            name: self.name.clone(),
            role: self.role,
            created_at: self.created_at,
            created_by: self.created_by.clone(),
            revoked_at: self.revoked_at,
            revoked_by: self.revoked_by.clone(),
        }
    }
}

/// A token as listings show it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TokenInfo {
    pub id: String,
    pub name: String,
    pub role: Role,
    pub created_at: DateTime<Utc>,
    pub created_by: String,
    pub revoked_at: Option<DateTime<Utc>>,
    pub revoked_by: Option<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct TokenFile {
    tokens: Vec<TokenEntry>,
}

/// A token just made: the only time its secret is known.
#[derive(Debug, Clone, Serialize)]
pub struct NewToken {
    #[serde(flatten)]
    pub info: TokenInfo,
    /// Give this to the client; it is not kept.
    pub token: String,
}

/// The station's tokens. Cheap to clone.
#[derive(Clone)]
pub struct Tokens {
    inner: Arc<TokensInner>,
}

struct TokensInner {
    path: PathBuf,
    env_admin: Option<String>,
    state: RwLock<Loaded>,
    /// Serialises writers of the file within this process.
    write: std::sync::Mutex<()>,
}

#[derive(Default)]
struct Loaded {
    /// The file's identity when read: a change to any part means it was rewritten.
    stamp: Option<FileStamp>,
    /// Counts reloads, so a check that began before one does not cache its answer after it.
    generation: u64,
    entries: Vec<TokenEntry>,
    /// SHA-256 of tokens already checked → who they are.
    verified: HashMap<[u8; 32], Principal>,
    /// SHA-256 of well-formed tokens that failed the check (bounded), so a client repeating a
    /// wrong secret does not make the station run argon2 again and again.
    refused: std::collections::HashSet<[u8; 32]>,
}

/// Modification time, size and inode: the file is replaced by rename on every write, so the
/// inode changes even when the time does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    modified: SystemTime,
    len: u64,
    inode: u64,
}

/// Failed tokens remembered at most.
const REFUSED_MEMORY: usize = 4096;

/// argon2 checks at a time: each takes tens of milliseconds of a core, and the cores belong
/// to inspection.
static HASHING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Checks waiting for [`HASHING`]; past [`MAX_WAITING`] a new credential is refused at once
/// (401) rather than queued, so a flood of made-up secrets cannot pile up threads.
static WAITING: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
const MAX_WAITING: usize = 16;

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("path", &self.inner.path)
            .finish()
    }
}

/// The token file of a data folder.
pub fn token_file(data_dir: &Path) -> PathBuf {
    data_dir.join("tokens.json")
}

impl Tokens {
    /// The tokens of `data_dir`; `env_admin` is `LINESIGHT_ADMIN_TOKEN` if set.
    pub fn open(data_dir: &Path, env_admin: Option<String>) -> Result<Tokens, AuthError> {
        let tokens = Tokens {
            inner: Arc::new(TokensInner {
                path: token_file(data_dir),
                env_admin: env_admin.filter(|t| !t.is_empty()),
                state: RwLock::new(Loaded::default()),
                write: std::sync::Mutex::new(()),
            }),
        };
        tokens.reload_if_changed()?;
        Ok(tokens)
    }

    /// Every token, without hashes.
    pub fn list(&self) -> Result<Vec<TokenInfo>, AuthError> {
        self.reload_if_changed()?;
        Ok(self.read().entries.iter().map(TokenEntry::public).collect())
    }

    /// Whether an admin token (not revoked) exists in the file.
    pub fn has_admin(&self) -> Result<bool, AuthError> {
        self.reload_if_changed()?;
        Ok(self
            .read()
            .entries
            .iter()
            .any(|e| e.role == Role::Admin && e.revoked_at.is_none()))
    }

    /// Makes a token; returns it with its secret (shown once). Blocking (argon2).
    pub fn create(&self, name: &str, role: Role, created_by: &str) -> Result<NewToken, AuthError> {
        check_name(name)?;
        let mut rng = rand::thread_rng();
        let id = format!("{:08x}", rng.next_u32());
        let mut secret = [0u8; 32];
        rng.fill_bytes(&mut secret);
        let secret = hex::encode(secret);
        let salt = SaltString::generate(&mut rand::rngs::OsRng);
        let hash = Argon2::default()
            .hash_password(secret.as_bytes(), &salt)
            .map_err(|e| AuthError::Hash(e.to_string()))?
            .to_string();
        let entry = TokenEntry {
            id: id.clone(),
            name: name.to_owned(),
            role,
            hash,
            created_at: Utc::now(),
            created_by: created_by.to_owned(),
            revoked_at: None,
            revoked_by: None,
        };
        let info = entry.public();
        self.modify(|entries| {
            entries.push(entry);
            Ok(())
        })?;
        Ok(NewToken {
            info,
            token: format!("lst_{id}_{secret}"),
        })
    }

    /// Revokes a token by id; `by` is who did it.
    pub fn revoke(&self, id: &str, by: &str) -> Result<TokenInfo, AuthError> {
        let mut revoked = None;
        self.modify(|entries| {
            let entry = entries
                .iter_mut()
                .find(|e| e.id == id)
                .ok_or_else(|| AuthError::UnknownId(id.to_owned()))?;
            if entry.revoked_at.is_none() {
                entry.revoked_at = Some(Utc::now());
                entry.revoked_by = Some(by.to_owned());
            }
            revoked = Some(entry.public());
            Ok(())
        })?;
        revoked.ok_or_else(|| AuthError::UnknownId(id.to_owned()))
    }

    /// Who holds `token`, if it was checked before (or is the environment's admin token).
    /// Never blocks for long: no hashing.
    pub fn cached(&self, token: &str) -> Option<Principal> {
        if let Some(env) = &self.inner.env_admin
            && constant_time_eq(token.as_bytes(), env.as_bytes())
        {
            return Some(Principal {
                name: "env-admin".into(),
                role: Role::Admin,
                token_id: "env".into(),
            });
        }
        if let Err(error) = self.reload_if_changed() {
            tracing::error!(%error, "cannot read the token file; keeping the tokens known");
        }
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        self.read().verified.get(&digest).cloned()
    }

    /// Who holds `token`, if anyone. Blocking the first time a token is seen (argon2).
    pub fn verify(&self, token: &str) -> Option<Principal> {
        if let Some(principal) = self.cached(token) {
            return Some(principal);
        }
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let (id, secret) = parse_token(token)?;
        let (entry, generation) = {
            let state = self.read();
            if state.refused.contains(&digest) {
                return None;
            }
            let entry = state
                .entries
                .iter()
                .find(|e| e.id == id && e.revoked_at.is_none())
                .cloned()?;
            (entry, state.generation)
        };
        let hash = PasswordHash::new(&entry.hash).ok()?;
        use std::sync::atomic::Ordering;
        if WAITING.fetch_add(1, Ordering::AcqRel) >= MAX_WAITING {
            WAITING.fetch_sub(1, Ordering::AcqRel);
            tracing::warn!("too many credential checks waiting; refusing one");
            return None;
        }
        let valid = {
            let _one = HASHING
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            Argon2::default()
                .verify_password(secret.as_bytes(), &hash)
                .is_ok()
        };
        WAITING.fetch_sub(1, Ordering::AcqRel);
        let mut state = self
            .inner
            .state
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // The file changed while we hashed (a revocation, say): the answer stands only if the
        // token is still there as it was, unrevoked; another token created or revoked meanwhile
        // changes nothing for this one, and must not turn a good credential away.
        let entry = if state.generation == generation {
            entry
        } else {
            let current = state
                .entries
                .iter()
                .find(|e| e.id == entry.id && e.revoked_at.is_none() && e.hash == entry.hash)
                .cloned();
            match current {
                // As the file now says it (its name or role may have changed).
                Some(current) if valid => current,
                _ => return None,
            }
        };
        if !valid {
            if state.refused.len() >= REFUSED_MEMORY {
                state.refused.clear();
            }
            state.refused.insert(digest);
            return None;
        }
        let principal = Principal {
            name: entry.name,
            role: entry.role,
            token_id: entry.id,
        };
        state.verified.insert(digest, principal.clone());
        Some(principal)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Loaded> {
        // A panic while holding the lock leaves consistent data (we replace it whole).
        self.inner
            .state
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Re-reads the file when its modification time changed (or it appeared or vanished).
    fn reload_if_changed(&self) -> Result<(), AuthError> {
        let path = &self.inner.path;
        let stamp = match std::fs::metadata(path) {
            Ok(meta) => {
                use std::os::unix::fs::MetadataExt;
                Some(FileStamp {
                    modified: meta.modified().map_err(|source| AuthError::Io {
                        path: path.clone(),
                        source,
                    })?,
                    len: meta.len(),
                    inode: meta.ino(),
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(source) => {
                return Err(AuthError::Io {
                    path: path.clone(),
                    source,
                });
            }
        };
        if self.read().stamp == stamp && stamp.is_some() {
            return Ok(());
        }
        let entries = read_file(path)?.tokens;
        let mut state = self
            .inner
            .state
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *state = Loaded {
            stamp,
            generation: state.generation + 1,
            entries,
            // A revoked or changed token must be checked again.
            verified: HashMap::new(),
            refused: std::collections::HashSet::new(),
        };
        Ok(())
    }

    /// Read, change, write atomically (temp file, fsync, rename, fsync the folder).
    fn modify(
        &self,
        change: impl FnOnce(&mut Vec<TokenEntry>) -> Result<(), AuthError>,
    ) -> Result<(), AuthError> {
        let _one = self
            .inner
            .write
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let path = &self.inner.path;
        // Other processes (`linesight token`, the station) change the file too: one at a time.
        let _locked = FileLock::take(&path.with_extension("json.lock"))?;
        let mut file = read_file(path)?;
        change(&mut file.tokens)?;
        let io = |source| AuthError::Io {
            path: path.clone(),
            source,
        };
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(io)?;
        let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
        {
            use std::os::unix::fs::PermissionsExt;
            tmp.as_file()
                .set_permissions(std::fs::Permissions::from_mode(0o600))
                .map_err(io)?;
        }
        let json = serde_json::to_vec_pretty(&file).map_err(|e| AuthError::Invalid {
            path: path.clone(),
            message: e.to_string(),
        })?;
        tmp.write_all(&json).map_err(io)?;
        tmp.as_file().sync_all().map_err(io)?;
        tmp.persist(path).map_err(|e| io(e.error))?;
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io)?;
        drop(_one);
        // The rename gave the file a new inode, so the stamp differs and this re-reads it.
        self.reload_if_changed()
    }
}

/// An exclusive `flock` on a lock file beside the token file, released on drop.
struct FileLock(std::fs::File);

impl FileLock {
    fn take(path: &Path) -> Result<FileLock, AuthError> {
        use std::os::fd::AsRawFd;
        let io = |source| AuthError::Io {
            path: path.to_owned(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(io)?;
        // SAFETY: flock on a file descriptor we own; it blocks until the lock is ours.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(io(std::io::Error::last_os_error()));
        }
        Ok(FileLock(file))
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        use std::os::fd::AsRawFd;
        // SAFETY: unlocking the descriptor we locked; closing it would release it anyway.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

fn read_file(path: &Path) -> Result<TokenFile, AuthError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| AuthError::Invalid {
            path: path.to_owned(),
            message: e.to_string(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(TokenFile::default()),
        Err(source) => Err(AuthError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

fn check_name(name: &str) -> Result<(), AuthError> {
    let ok = (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'));
    if ok {
        Ok(())
    } else {
        Err(AuthError::BadName(name.to_owned()))
    }
}

/// `lst_<8 hex>_<64 hex>` → (id, secret).
fn parse_token(token: &str) -> Option<(&str, &str)> {
    let rest = token.strip_prefix("lst_")?;
    let (id, secret) = rest.split_once('_')?;
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    (hex(id, 8) && hex(secret, 64)).then_some((id, secret))
}

/// Compares in time independent of where the inputs differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Who made token changes outside the API (`linesight token` on the box, or `make run`'s
/// demo admin): those appear in the token file, not in a request, so this task puts them in
/// the audit log when it sees them, each once. Changes made over the API are audited by
/// their handlers.
pub async fn run_token_auditor(
    tokens: Tokens,
    store: crate::record::Store,
    stop: tokio_util::sync::CancellationToken,
) {
    loop {
        match tokens.list() {
            Ok(list) => {
                for token in list {
                    let target = format!("{} ({}, {})", token.id, token.name, token.role);
                    let mut changes = Vec::new();
                    if LOCAL_MAKERS.contains(&token.created_by.as_str()) {
                        changes.push(("created", "token.create", token.created_by.clone()));
                    }
                    if let Some(by) = token
                        .revoked_by
                        .as_ref()
                        .filter(|b| LOCAL_MAKERS.contains(&b.as_str()))
                    {
                        changes.push(("revoked", "token.revoke", by.clone()));
                    }
                    for (what, action, actor) in changes {
                        let entry = crate::record::RecordBody::Audit(crate::record::AuditRecord {
                            actor,
                            role: "local".into(),
                            action: action.into(),
                            target: target.clone(),
                        });
                        let mark = format!("audit/token/{}/{what}", token.id);
                        if let Err(error) = store.append_once(&mark, entry).await {
                            tracing::warn!(%error, "cannot audit a token change yet");
                        }
                    }
                }
            }
            Err(error) => tracing::warn!(%error, "cannot read the tokens to audit them"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(std::time::Duration::from_secs(2)) => {}
        }
    }
}

/// Makers of tokens outside the API: the CLI on the box and `make run`'s demo admin.
const LOCAL_MAKERS: [&str; 2] = ["cli", "make run"];

/// A request to make a token.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateTokenRequest {
    name: String,
    role: Role,
}

pub(super) async fn list_tokens(
    axum::extract::State(api): axum::extract::State<super::ApiState>,
) -> Result<axum::Json<Vec<TokenInfo>>, super::ApiError> {
    api.tokens
        .list()
        .map(axum::Json)
        .map_err(|e| super::ApiError::InternalMessage(e.to_string()))
}

pub(super) async fn create_token(
    axum::extract::State(api): axum::extract::State<super::ApiState>,
    axum::Extension(who): axum::Extension<Principal>,
    body: Result<axum::Json<CreateTokenRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<(axum::http::StatusCode, axum::Json<NewToken>), super::ApiError> {
    let axum::Json(request) = body?;
    check_name(&request.name).map_err(|e| super::ApiError::BadRequest(e.to_string()))?;
    let tokens = api.tokens.clone();
    let by = who.name.clone();
    let made = tokio::task::spawn_blocking(move || tokens.create(&request.name, request.role, &by))
        .await
        .map_err(|e| super::ApiError::InternalMessage(e.to_string()))?
        .map_err(|e| super::ApiError::InternalMessage(e.to_string()))?;
    let target = format!("{} ({}, {})", made.info.id, made.info.name, made.info.role);
    api.store
        .append(crate::record::RecordBody::Audit(
            who.audit("token.create", &target),
        ))
        .await?;
    Ok((axum::http::StatusCode::CREATED, axum::Json(made)))
}

pub(super) async fn revoke_token(
    axum::extract::State(api): axum::extract::State<super::ApiState>,
    axum::Extension(who): axum::Extension<Principal>,
    id: Result<axum::extract::Path<String>, axum::extract::rejection::PathRejection>,
) -> Result<axum::Json<TokenInfo>, super::ApiError> {
    let axum::extract::Path(id) = id.map_err(|e| super::ApiError::BadRequest(e.body_text()))?;
    let tokens = api.tokens.clone();
    let (by, wanted) = (who.name.clone(), id.clone());
    let revoked = tokio::task::spawn_blocking(move || tokens.revoke(&wanted, &by))
        .await
        .map_err(|e| super::ApiError::InternalMessage(e.to_string()))?;
    let revoked = match revoked {
        Ok(info) => info,
        Err(AuthError::UnknownId(id)) => {
            return Err(super::ApiError::NotFound(format!(
                "no token with id {id:?}"
            )));
        }
        Err(e) => return Err(super::ApiError::InternalMessage(e.to_string())),
    };
    let target = format!("{} ({})", revoked.id, revoked.name);
    api.store
        .append(crate::record::RecordBody::Audit(
            who.audit("token.revoke", &target),
        ))
        .await?;
    Ok(axum::Json(revoked))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_grant_what_they_should_and_no_more() {
        use Permission::*;
        assert!(Role::Operator.may(Read));
        assert!(!Role::Operator.may(Pull) && !Role::Operator.may(Label));
        assert!(Role::Operator.may(Flag) && !Role::MesClient.may(Flag));
        assert!(Role::Engineer.may(Label) && Role::Engineer.may(ChangeModels));
        assert!(!Role::Engineer.may(WorkOrders) && !Role::Engineer.may(Admin));
        assert!(Role::MesClient.may(Pull) && Role::MesClient.may(WorkOrders));
        assert!(!Role::MesClient.may(ChangeModels) && !Role::MesClient.may(Admin));
        assert!(Role::Admin.may(Admin));
        assert!(Role::MesClient.may(PushSensors) && !Role::Operator.may(PushSensors));
        // Alarms: operators respond, engineers also suppress and take out of service; the
        // MES, a system, does neither.
        assert!(Role::Operator.may(RespondToAlarms) && !Role::Operator.may(AlarmService));
        assert!(Role::Engineer.may(RespondToAlarms) && Role::Engineer.may(AlarmService));
        assert!(Role::Admin.may(RespondToAlarms) && Role::Admin.may(AlarmService));
        assert!(!Role::MesClient.may(RespondToAlarms) && !Role::MesClient.may(AlarmService));
        assert_eq!("mes-client".parse::<Role>(), Ok(Role::MesClient));
        assert!("root".parse::<Role>().is_err());
    }

    #[test]
    fn a_token_verifies_until_revoked_and_its_secret_is_not_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tokens = Tokens::open(dir.path(), None).expect("open");
        assert!(!tokens.has_admin().expect("read"));
        let made = tokens
            .create("mes-1", Role::MesClient, "cli")
            .expect("create");
        let file = std::fs::read_to_string(token_file(dir.path())).expect("file");
        let secret = made.token.rsplit('_').next().expect("secret");
        assert!(!file.contains(secret), "the secret must not be stored");
        assert!(file.contains("$argon2id$"));
        let who = tokens.verify(&made.token).expect("valid");
        assert_eq!((who.name.as_str(), who.role), ("mes-1", Role::MesClient));
        // Another process (the CLI) reads the same file.
        let other = Tokens::open(dir.path(), None).expect("open");
        assert_eq!(other.verify(&made.token), Some(who));
        let mut wrong = made.token.clone();
        wrong.pop();
        wrong.push(if made.token.ends_with('0') { '1' } else { '0' });
        assert_eq!(tokens.verify(&wrong), None);
        assert_eq!(tokens.verify("lst_nope"), None);
        assert_eq!(tokens.verify(""), None);
        other.revoke(&made.info.id, "cli").expect("revoke");
        assert_eq!(
            tokens.verify(&made.token),
            None,
            "revocation takes effect at once"
        );
        assert!(tokens.create("bad name", Role::Admin, "cli").is_err());
    }

    #[test]
    fn the_environment_admin_token_still_works() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tokens = Tokens::open(dir.path(), Some("s3cret".into())).expect("open");
        let who = tokens.verify("s3cret").expect("admin");
        assert_eq!(who.role, Role::Admin);
        assert_eq!(tokens.verify("s3cre"), None);
    }
}
