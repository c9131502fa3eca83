//! Finishing a move the server did not finish. A MOVE (and the
//! COPY + EXPUNGE used without it) is not atomic across a server crash:
//! Dovecot commits the copy in the destination folder, then the expunge in
//! the mailbox, so a server killed in between keeps the mail in both. The
//! gateway reads such a mail again (it is above the checkpoint), knows it
//! was stored by its idempotency key, and would move it a second time:
//! the processed folder would hold it twice.
//!
//! So a mail stored before is first looked for among the last mails of its
//! folder, by Message-ID and exact size (a copy keeps both); found there,
//! it is only expunged. Mail without a Message-ID cannot be recognised and
//! is moved as before (a duplicate in the folder, never a loss).

use std::collections::HashMap;

use futures_util::TryStreamExt;

use super::connect::Session;
use super::error::ImapError;
use super::fetch;

/// What a copy of a mail in another folder shares with it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Fingerprint {
    pub message_id: String,
    /// RFC822.SIZE as the server reports it.
    pub size: u32,
}

impl Fingerprint {
    /// `None` for a mail without a Message-ID: it cannot be told apart.
    pub fn of(raw: &[u8], size: u32) -> Option<Fingerprint> {
        fetch::message_id(raw).map(|message_id| Fingerprint { message_id, size })
    }
}

/// A mail stored before and read again, with what identifies its copy.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub uid: u32,
    pub fingerprint: Fingerprint,
}

/// The UIDs of `candidates` (mails of the selected mailbox) whose copy is
/// among the last `window` mails of `folder`. The folder is EXAMINEd
/// (read-only), so the caller must SELECT its mailbox again afterwards. A
/// folder that does not exist holds no copy.
pub async fn already_copied(
    session: &mut Session,
    folder: &str,
    candidates: &[&Candidate],
    window: usize,
) -> Result<Vec<u32>, ImapError> {
    let examined = match session.examine(folder).await {
        Ok(examined) => examined,
        Err(async_imap::error::Error::No(_)) => return Ok(Vec::new()),
        Err(e) => return Err(ImapError::protocol("EXAMINE")(e)),
    };
    if examined.exists == 0 || candidates.is_empty() {
        return Ok(Vec::new());
    }
    let window = u32::try_from(window).unwrap_or(u32::MAX);
    let from = examined.exists.saturating_sub(window).max(1);
    let mut copies: HashMap<Fingerprint, usize> = HashMap::new();
    let mut answers = session
        .fetch(format!("{from}:*"), "(RFC822.SIZE BODY.PEEK[HEADER])")
        .await
        .map_err(ImapError::protocol("FETCH copies"))?;
    // Picked and dropped one by one: only the fingerprints are kept.
    while let Some(answer) = answers
        .try_next()
        .await
        .map_err(ImapError::protocol("FETCH copies"))?
    {
        let (Some(size), Some(header)) = (answer.size, answer.header()) else {
            continue;
        };
        if let Some(fingerprint) = Fingerprint::of(header, size) {
            *copies.entry(fingerprint).or_default() += 1;
        }
    }
    Ok(copied(candidates, copies))
}

/// Matches candidates to copies; each copy answers for one mail only, so
/// two identical mails with one copy between them get one expunge and one
/// move.
fn copied(candidates: &[&Candidate], mut copies: HashMap<Fingerprint, usize>) -> Vec<u32> {
    let mut found = Vec::new();
    for candidate in candidates {
        match copies.get_mut(&candidate.fingerprint) {
            Some(left) if *left > 0 => {
                *left -= 1;
                found.push(candidate.uid);
            }
            _ => {}
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(uid: u32, id: &str, size: u32) -> Candidate {
        Candidate {
            uid,
            fingerprint: Fingerprint {
                message_id: id.into(),
                size,
            },
        }
    }

    #[test]
    fn a_copy_matches_by_message_id_and_exact_size() {
        let copies = [
            (
                Fingerprint {
                    message_id: "a@shop".into(),
                    size: 100,
                },
                1,
            ),
            (
                Fingerprint {
                    message_id: "b@shop".into(),
                    size: 200,
                },
                1,
            ),
        ]
        .into_iter()
        .collect();
        let candidates = [
            candidate(1, "a@shop", 100),
            candidate(2, "b@shop", 201),
            candidate(3, "c@shop", 100),
        ];
        assert_eq!(
            copied(&candidates.iter().collect::<Vec<_>>(), copies),
            vec![1],
            "b differs in size, c has no copy"
        );
    }

    #[test]
    fn one_copy_answers_for_one_mail() {
        let copies = [(
            Fingerprint {
                message_id: "a@shop".into(),
                size: 100,
            },
            1,
        )]
        .into_iter()
        .collect();
        let twins = [candidate(7, "a@shop", 100), candidate(8, "a@shop", 100)];
        assert_eq!(copied(&twins.iter().collect::<Vec<_>>(), copies), vec![7]);
    }

    #[test]
    fn mail_without_a_message_id_has_no_fingerprint() {
        assert_eq!(Fingerprint::of(b"From: a@b\r\n\r\nhi\r\n", 20), None);
        assert_eq!(
            Fingerprint::of(b"Message-ID: <x@y>\r\n\r\nhi\r\n", 25),
            Some(Fingerprint {
                message_id: "x@y".into(),
                size: 25
            })
        );
    }
}
