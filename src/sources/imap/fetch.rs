//! The IMAP commands that move mail, each over a whole batch in one round
//! trip: UID SEARCH for what is pending, UID FETCH of sizes, headers or
//! whole mails over a UID set, and UID MOVE / STORE to acknowledge.

use std::collections::HashMap;

use bytes::Bytes;
use futures_util::TryStreamExt;

use super::connect::{Features, Session};
use super::error::ImapError;

/// UIDs above `after` still waiting, oldest first. With `unseen_only`
/// (processed mail is flagged, not moved) mail already seen is skipped.
pub async fn pending(
    session: &mut Session,
    after: u32,
    unseen_only: bool,
) -> Result<Vec<u32>, ImapError> {
    let from = after.saturating_add(1);
    let query = if unseen_only {
        format!("UID {from}:* UNSEEN")
    } else {
        format!("UID {from}:*")
    };
    let found = session
        .uid_search(query)
        .await
        .map_err(ImapError::protocol("UID SEARCH"))?;
    // `n:*` always matches the highest UID, even below n: filter it out.
    let mut uids: Vec<u32> = found.into_iter().filter(|uid| *uid > after).collect();
    uids.sort_unstable();
    Ok(uids)
}

/// RFC822.SIZE of each mail of `uids` still in the mailbox (one expunged
/// meanwhile is simply missing from the answer).
pub async fn sizes(session: &mut Session, uids: &[u32]) -> Result<HashMap<u32, u32>, ImapError> {
    fetch(session, uids, "(UID RFC822.SIZE)", "UID FETCH sizes", |f| {
        f.size
    })
    .await
}

/// The whole mail of each of `uids`, without setting \Seen.
pub async fn bodies(session: &mut Session, uids: &[u32]) -> Result<HashMap<u32, Bytes>, ImapError> {
    fetch(session, uids, "(UID BODY.PEEK[])", "UID FETCH mails", |f| {
        f.body().map(Bytes::copy_from_slice)
    })
    .await
}

/// Only the header of each of `uids` (for mail too big to download).
pub async fn headers(
    session: &mut Session,
    uids: &[u32],
) -> Result<HashMap<u32, Bytes>, ImapError> {
    fetch(
        session,
        uids,
        "(UID BODY.PEEK[HEADER])",
        "UID FETCH headers",
        |f| f.header().map(Bytes::copy_from_slice),
    )
    .await
}

/// One UID FETCH of `items` over `uids`: what `pick` takes out of each
/// answer, by UID.
async fn fetch<T>(
    session: &mut Session,
    uids: &[u32],
    items: &str,
    step: &'static str,
    pick: impl Fn(&async_imap::types::Fetch) -> Option<T>,
) -> Result<HashMap<u32, T>, ImapError> {
    let mut found = HashMap::with_capacity(uids.len());
    if uids.is_empty() {
        return Ok(found);
    }
    let wanted: std::collections::HashSet<u32> = uids.iter().copied().collect();
    let mut answers = session
        .uid_fetch(uid_set(uids), items)
        .await
        .map_err(ImapError::protocol(step))?;
    // Each answer is picked and dropped as it arrives: the client keeps a
    // whole read buffer (4 KB or more) behind every answer, so collecting a
    // batch of them first held megabytes, and the allocator handed those
    // pages back and faulted them in again batch after batch.
    while let Some(answer) = answers
        .try_next()
        .await
        .map_err(ImapError::protocol(step))?
    {
        // Unsolicited FETCH responses (another client's flag change) may
        // be mixed in: keep only answers about the UIDs asked for.
        let Some(uid) = answer.uid.filter(|uid| wanted.contains(uid)) else {
            continue;
        };
        if let Some(value) = pick(&answer) {
            found.insert(uid, value);
        }
    }
    Ok(found)
}

/// Where acknowledged mail goes.
#[derive(Debug, Clone, Copy)]
pub enum Ack<'a> {
    MoveTo(&'a str),
    FlagSeen,
}

/// Acknowledges `uids` in one command: moved to a folder, or flagged \Seen.
pub async fn acknowledge(
    session: &mut Session,
    features: Features,
    uids: &[u32],
    ack: Ack<'_>,
) -> Result<(), ImapError> {
    if uids.is_empty() {
        return Ok(());
    }
    let set = uid_set(uids);
    match ack {
        Ack::FlagSeen => store(session, &set, "+FLAGS.SILENT (\\Seen)").await,
        Ack::MoveTo(folder) if features.moves => session
            .uid_mv(&set, folder)
            .await
            .map_err(ImapError::protocol("UID MOVE")),
        Ack::MoveTo(folder) => {
            // RFC 3501 without MOVE: copy, mark deleted, expunge. A crash
            // in between leaves a copy in both places, never none (see
            // `recover` for how the second is avoided).
            session
                .uid_copy(&set, folder)
                .await
                .map_err(ImapError::protocol("UID COPY"))?;
            expunge(session, features, uids).await
        }
    }
}

/// Removes `uids` from the selected mailbox: flagged \Deleted, then UID
/// EXPUNGE (only these) or, without UIDPLUS, EXPUNGE.
pub async fn expunge(
    session: &mut Session,
    features: Features,
    uids: &[u32],
) -> Result<(), ImapError> {
    if uids.is_empty() {
        return Ok(());
    }
    let set = uid_set(uids);
    store(session, &set, "+FLAGS.SILENT (\\Deleted)").await?;
    if features.uidplus {
        let step = "UID EXPUNGE";
        let answers = session
            .uid_expunge(&set)
            .await
            .map_err(ImapError::protocol(step))?;
        read_to_end(answers, step).await
    } else {
        let step = "EXPUNGE";
        let answers = session.expunge().await.map_err(ImapError::protocol(step))?;
        read_to_end(answers, step).await
    }
}

async fn store(session: &mut Session, set: &str, what: &str) -> Result<(), ImapError> {
    let step = "UID STORE";
    let answers = session
        .uid_store(set, what)
        .await
        .map_err(ImapError::protocol(step))?;
    read_to_end(answers, step).await
}

/// Reads a command's answers to its end, dropping them: the command is
/// done (or refused) only with its tagged reply, after them.
async fn read_to_end<T>(
    answers: impl futures_util::Stream<Item = async_imap::error::Result<T>>,
    step: &'static str,
) -> Result<(), ImapError> {
    answers
        .try_for_each(|_| std::future::ready(Ok(())))
        .await
        .map_err(ImapError::protocol(step))
}

/// A compact UID set: sorted UIDs as ranges, `1:200,305,400:410`.
pub fn uid_set(uids: &[u32]) -> String {
    let mut sorted = uids.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut out = String::new();
    let mut i = 0;
    while i < sorted.len() {
        let start = sorted[i];
        let mut end = start;
        while i + 1 < sorted.len() && sorted[i + 1] == end + 1 {
            i += 1;
            end = sorted[i];
        }
        if !out.is_empty() {
            out.push(',');
        }
        if start == end {
            out.push_str(&start.to_string());
        } else {
            out.push_str(&format!("{start}:{end}"));
        }
        i += 1;
    }
    out
}

/// The Message-ID header's value from raw header bytes, if any.
pub fn message_id(raw: &[u8]) -> Option<String> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .or_else(|| raw.windows(2).position(|w| w == b"\n\n"))
        .unwrap_or(raw.len());
    let header = &raw[..end];
    let mut lines = header.split(|b| *b == b'\n').peekable();
    while let Some(line) = lines.next() {
        if line.len() >= 11 && line[..11].eq_ignore_ascii_case(b"message-id:") {
            let mut value = String::from_utf8_lossy(&line[11..]).into_owned();
            // Folded continuation lines.
            while let Some(next) = lines.peek() {
                if next.first().is_some_and(|b| *b == b' ' || *b == b'\t') {
                    value.push_str(&String::from_utf8_lossy(next));
                    lines.next();
                } else {
                    break;
                }
            }
            let value = value.trim().trim_matches(['<', '>']).trim().to_string();
            return (!value.is_empty()).then_some(value);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uid_sets_are_ranges() {
        assert_eq!(uid_set(&[5, 1, 2, 3, 7, 8, 10]), "1:3,5,7:8,10");
        assert_eq!(uid_set(&[42]), "42");
        assert_eq!(uid_set(&[]), "");
    }

    #[test]
    fn message_id_is_found_case_and_fold_insensitively() {
        let raw = b"From: a@b\r\nmessage-ID:\r\n <abc@shop.test>\r\nSubject: x\r\n\r\nMessage-ID: <body@x>\r\n";
        assert_eq!(message_id(raw).as_deref(), Some("abc@shop.test"));
        assert_eq!(
            message_id(b"From: a@b\r\n\r\nMessage-ID: <no>\r\n"),
            None,
            "not from the body"
        );
    }
}
