//! What the fuzz targets share: the gateway's stack size, a reusable
//! single-threaded runtime, and the checks every envelope must pass.

use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};

use intake::envelope::Envelope;

/// The stack of a tokio worker thread, where the gateway parses. The
/// fuzzer's own thread has 8 MiB; an input that only overflows the smaller
/// stack would crash the gateway and pass here unless run on this one.
pub const WORKER_STACK: usize = 2 << 20;

type Job = Box<dyn FnOnce() + Send>;

struct Worker {
    jobs: mpsc::SyncSender<Job>,
    done: mpsc::Receiver<()>,
}

/// Runs `job` on one long-lived thread with [`WORKER_STACK`] and waits for
/// it. A panic there aborts the process (libFuzzer's panic hook), which the
/// fuzzer reports as a crash with the input that caused it.
pub fn on_worker_stack(job: impl FnOnce() + Send + 'static) {
    static WORKER: OnceLock<Mutex<Worker>> = OnceLock::new();
    let worker = WORKER.get_or_init(|| {
        let (jobs, job_rx) = mpsc::sync_channel::<Job>(0);
        let (done_tx, done) = mpsc::sync_channel(0);
        std::thread::Builder::new()
            .name("worker-stack".into())
            .stack_size(WORKER_STACK)
            .spawn(move || {
                for job in job_rx {
                    job();
                    let _ = done_tx.send(());
                }
            })
            .expect("spawn the worker thread");
        Mutex::new(Worker { jobs, done })
    });
    let worker = worker.lock().expect("worker lock");
    worker.jobs.send(Box::new(job)).expect("worker alive");
    worker.done.recv().expect("worker finished the job");
}

/// Runs a future to completion on a current-thread runtime built once.
pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    thread_local! {
        static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("build a current-thread runtime");
    }
    RUNTIME.with(|rt| rt.block_on(future))
}

/// What holds for every envelope the desk can receive: it serializes to
/// JSON, the JSON reads back to the same envelope, and its attachments
/// describe their content.
pub fn check_envelope(envelope: &Envelope) {
    let json = serde_json::to_string(envelope).expect("the envelope serializes to JSON");
    let back: Envelope = serde_json::from_str(&json).expect("the envelope's JSON reads back");
    assert_eq!(&back, envelope, "the JSON round trip keeps the envelope");
    for attachment in &envelope.attachments {
        assert_eq!(
            attachment.size,
            attachment.content_base64.0.len() as u64,
            "size is the decoded content's length"
        );
        assert!(
            attachment.sha256.len() == 64
                && attachment
                    .sha256
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
            "sha256 is 64 lower-case hex digits: {}",
            attachment.sha256
        );
        if let Some(name) = &attachment.filename {
            check_safe_filename(name);
        }
        if let Some(original) = &attachment.original_filename {
            assert!(
                attachment
                    .filename
                    .as_ref()
                    .is_some_and(|safe| safe != original),
                "original_filename only beside a safe name that differs: {attachment:?}"
            );
        }
    }
}

/// A file name the desk may show and save under (src/parse/filename.rs),
/// checked from the outside: not empty, at most 255 bytes, no control,
/// bidi or zero-width character, no path separator or colon, no leading
/// dot or space, no trailing dot or space, no run of spaces.
pub fn check_safe_filename(name: &str) {
    let invisible = |c: char| {
        matches!(c, '\u{061C}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{2069}' | '\u{FEFF}')
    };
    assert!(!name.is_empty() && name.len() <= 255, "length: {name:?}");
    assert!(
        !name.chars().any(|c| c.is_control() || invisible(c)),
        "a control or invisible character: {name:?}"
    );
    assert!(
        !name.contains(['/', '\\', ':', '\u{FF0F}', '\u{FF3C}']),
        "a path part: {name:?}"
    );
    assert!(
        !name.starts_with(['.', ' ']) && !name.ends_with(['.', ' ']) && !name.contains("  "),
        "hiding dots or spaces: {name:?}"
    );
}

/// Card masking only turns ASCII digits into `*`: same length, and every
/// byte that changed was a digit and is now a `*`.
pub fn check_masked(before: &str, after: &str, what: &str) {
    assert_eq!(
        before.len(),
        after.len(),
        "{what}: masking keeps the length"
    );
    for (b, a) in before.bytes().zip(after.bytes()) {
        assert!(
            a == b || (b.is_ascii_digit() && a == b'*'),
            "{what}: masking changed {:?} into {:?}",
            b as char,
            a as char
        );
    }
}
