//! Actions on alarms: what the station does beyond showing an alarm.
//!
//! - [`webhook`]: alarm transitions POSTed as JSON alerts to receivers such as a CMMS
//!   (`[[webhooks]]`), at least once, from a durable outbox;
//! - [`halt_line`]: the latched halt-line coil on the PLC for a burst of critical defects
//!   (`[halt_line]`), raised as the `halt_line` alarm and reset only by an operator.
//!
//! Both follow the journal from durable cursors kept in their own sled database,
//! `<data_dir>/actions` ([`ActionsDb`]), so a restart neither loses nor repeats their work:
//! an alarm raised through [`super::alarms::AlarmManager`] is all it takes to send an alert.
//! A raiser that knows more than the alarm definition says (equipment, horizon, evidence) puts
//! it in [`AlertDetails`] first, with [`ActionsDb::put_alert_details`].

pub mod halt_line;
pub mod webhook;

use std::path::{Path, PathBuf};

pub use halt_line::{
    HALT_LINE_ALARM, HaltLine, HaltLineContext, HaltLineError, HaltLineView, run_halt_line,
};
pub use webhook::{
    Alert, AlertDetails, AlertEvent, Evidence, Webhook, WebhookContext, WebhookError,
    WebhookSection, check_webhooks, run_webhooks,
};

use crate::record::open_sled;

/// Why the actions database failed.
#[derive(Debug, thiserror::Error)]
pub enum ActionsError {
    #[error("actions database {path}: {source}")]
    Open { path: PathBuf, source: sled::Error },
    #[error("actions database: {0}")]
    Sled(#[from] sled::Error),
    #[error("actions database: entry {key} is corrupt: {why}")]
    Corrupt { key: String, why: String },
}

impl<E: Into<ActionsError>> From<sled::transaction::TransactionError<E>> for ActionsError {
    fn from(error: sled::transaction::TransactionError<E>) -> ActionsError {
        match error {
            sled::transaction::TransactionError::Abort(error) => error.into(),
            sled::transaction::TransactionError::Storage(error) => ActionsError::Sled(error),
        }
    }
}

/// Tree of the alert details raisers attach to their alarms, by alarm name.
const ALERT_DETAILS_TREE: &str = "alert_details";

/// The sled database of the actions, `<data_dir>/actions`. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ActionsDb {
    db: sled::Db,
}

impl ActionsDb {
    /// Opens (or creates) `<data_dir>/actions`.
    pub fn open(data_dir: &Path) -> Result<ActionsDb, ActionsError> {
        let path = data_dir.join("actions");
        let db = open_sled(&path).map_err(|source| ActionsError::Open { path, source })?;
        Ok(ActionsDb { db })
    }

    fn tree(&self, name: &str) -> Result<sled::Tree, ActionsError> {
        Ok(self.db.open_tree(name)?)
    }

    /// Attaches `details` to alarm `alarm`: the next alerts of that alarm carry them. Call it
    /// before raising the alarm; durable when it returns.
    pub fn put_alert_details(
        &self,
        alarm: &str,
        details: &AlertDetails,
    ) -> Result<(), ActionsError> {
        let tree = self.tree(ALERT_DETAILS_TREE)?;
        // Serialising a plain struct of strings and numbers cannot fail.
        let bytes = serde_json::to_vec(details).unwrap_or_default();
        tree.insert(alarm.as_bytes(), bytes)?;
        tree.flush()?;
        Ok(())
    }

    /// The details attached to alarm `alarm`, if any.
    pub fn alert_details(&self, alarm: &str) -> Result<Option<AlertDetails>, ActionsError> {
        let tree = self.tree(ALERT_DETAILS_TREE)?;
        tree.get(alarm.as_bytes())?
            .map(|bytes| {
                serde_json::from_slice(&bytes).map_err(|e| ActionsError::Corrupt {
                    key: format!("{ALERT_DETAILS_TREE}/{alarm}"),
                    why: e.to_string(),
                })
            })
            .transpose()
    }

    /// Flushes everything written so far.
    pub fn flush(&self) -> Result<(), ActionsError> {
        self.db.flush()?;
        Ok(())
    }
}
