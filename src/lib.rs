//! corecast: a thread-per-core io_uring edge fan-out server speaking goim's
//! wire protocol (WebSocket and TCP) and goim's HTTP push API.
//!
//! Layout (one process):
//!
//! - [`config`]: TOML + flags + `CORECAST_*` variables → [`config::Config`].
//! - [`auth`]: op-7 token checks (JWT HS256 / EdDSA, or insecure).
//! - [`shard`]: the data plane. One pinned thread per shard, each with its own
//!   io_uring, `SO_REUSEPORT` listeners, direct-descriptor connections,
//!   provided-buffer receives, connection slab, room/key/mid indexes and
//!   timing wheel. `shard::host` holds the preflight and `host-check`.
//! - [`fanout`]: the only meeting point between shards and the rest: one SPSC
//!   ring of pre-encoded pushes into each shard, one ring of reports back,
//!   a sleeping-flag + eventfd wake-up, and the process-wide shutdown trigger.
//! - [`control`]: the glommio executor serving the HTTP API and metrics; it
//!   owns the producer ends of the fan-out rings.
//! - [`ingest`]: the Kafka consumer feeding control's dispatcher.
//!
//! `main.rs` wires them: config → preflight → listeners → rings → control →
//! shards → ready line; SIGTERM/SIGINT → graceful shutdown.

pub mod auth;
pub mod config;
pub mod control;
pub mod fanout;
pub mod ingest;
pub mod shard;
