//! intake: customer mail and web-form posts in, clean, parsed, de-flooded
//! messages out to Redis Streams for the help desk.
//!
//! Read the types first: [`submission::Submission`] (what a source hands
//! in), [`envelope::Envelope`] (the contract the desk reads) and
//! [`verdict`] (what a stage decided). [`pipeline`] shows the stages in
//! their fixed order.

pub mod acknowledge;
pub mod admin;
pub mod auth;
pub mod backpressure;
pub mod budget;
pub mod cli;
pub mod config;
pub mod delivery;
pub mod envelope;
pub mod guard;
pub mod parse;
pub mod pipeline;
pub mod redis_connection;
pub mod route;
pub mod scan;
pub mod secret;
pub mod serve;
pub mod sink;
pub mod sources;
pub mod submission;
pub mod telemetry;
pub mod tls_roots;
pub mod units;
pub mod validate;
pub mod verdict;
