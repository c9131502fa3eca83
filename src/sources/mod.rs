//! Where items come in. Each source turns what it accepted into a
//! [`crate::submission::Submission`], runs the pipeline, and acknowledges
//! only once the item is stored.

pub mod connections;
pub mod http;
pub mod imap;
pub mod lmtp;
pub mod offload;
pub mod smtp_client;
