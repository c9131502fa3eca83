//! Session start: the mailbox and its folders resolved as the server names
//! them (see `folders.rs`), then the folders checked and, when asked,
//! created. A folder that is missing and cannot be made is an error that
//! stops the mailbox ([`ImapError::FolderMissing`]): moving mail into it
//! would fail for every batch.

use std::sync::Arc;

use super::config::Processed;
use super::connect::{Features, Session};
use super::error::{bounded, ImapError, MissingFolder};
use super::folders::{self, Folders};
use super::Worker;

impl Worker {
    /// Resolves the names on this server, makes sure the folders exist, and
    /// makes the names the ones the session uses.
    pub(super) async fn prepare(
        &self,
        session: &mut Session,
        features: Features,
    ) -> Result<Arc<Folders>, ImapError> {
        let timeout = self.config.command_timeout.0;
        let namespaces = bounded(
            "NAMESPACE",
            timeout,
            folders::discover(session, features.namespace),
        )
        .await?;
        let mut quarantine = namespaces.resolve(&self.config.quarantine_folder);
        if self.config.quarantine_to_junk {
            match bounded("LIST", timeout, folders::junk(session)).await? {
                Some(junk) => quarantine = junk,
                None => {
                    if let Some(suppressed) = self.log_now("junk") {
                        tracing::warn!(mailbox = %self.label, folder = %quarantine, suppressed, "quarantine_to_junk: the server marks no folder \\Junk; quarantined mail goes to quarantine_folder");
                    }
                }
            }
        }
        let resolved = Folders {
            mailbox: namespaces.resolve(&self.mailbox),
            processed: namespaces.resolve(&self.config.processed_folder),
            quarantine,
            personal: namespaces.personal.clone(),
        };
        let previous = self.folders();
        let renamed = resolved.mailbox != self.mailbox
            || resolved.processed != self.config.processed_folder
            || resolved.quarantine != self.config.quarantine_folder;
        if renamed && *previous != resolved {
            tracing::info!(
                mailbox = %self.label,
                namespace = %resolved.personal.describe(),
                selects = %resolved.mailbox,
                processed_folder = %resolved.processed,
                quarantine_folder = %resolved.quarantine,
                "folder names resolved on the server: bare names are put into its personal namespace"
            );
        }

        let mut needed = vec![(
            "quarantine_folder",
            &self.config.quarantine_folder,
            &resolved.quarantine,
        )];
        if self.config.processed == Processed::Move {
            needed.push((
                "processed_folder",
                &self.config.processed_folder,
                &resolved.processed,
            ));
        }
        for (key, configured, folder) in needed {
            if bounded("LIST", timeout, folders::exists(session, folder)).await? {
                continue;
            }
            let said = if self.config.create_folders {
                let created = bounded("CREATE", timeout, async {
                    session
                        .create(folder)
                        .await
                        .map_err(ImapError::protocol("CREATE"))
                })
                .await;
                match created {
                    Ok(()) => {
                        tracing::info!(mailbox = %self.label, %folder, "folder created");
                        continue;
                    }
                    Err(ImapError::Refused { said, .. }) => {
                        tracing::warn!(mailbox = %self.label, %folder, server_said = %said, "the server refused to create the folder");
                        // Made meanwhile by someone else?
                        if bounded("LIST", timeout, folders::exists(session, folder)).await? {
                            continue;
                        }
                        format!(" (CREATE refused: {said})")
                    }
                    Err(e) => return Err(e),
                }
            } else {
                " (create_folders is off)".to_string()
            };
            let leaf = configured
                .rsplit(['.', '/'])
                .next()
                .unwrap_or(configured.as_str());
            return Err(ImapError::FolderMissing(Box::new(MissingFolder {
                key,
                configured: configured.clone(),
                folder: folder.clone(),
                said,
                personal: resolved.personal.describe(),
                example: resolved.personal.example(leaf),
            })));
        }
        let resolved = Arc::new(resolved);
        *self.folders.lock().unwrap_or_else(|e| e.into_inner()) = resolved.clone();
        Ok(resolved)
    }
}
