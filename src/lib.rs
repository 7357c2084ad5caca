//! corecast server (placeholder doc, expanded with the shards).

pub mod auth;
pub mod config;
pub mod control;
pub mod fanout;
pub mod ingest;
pub mod shard;
