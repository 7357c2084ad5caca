//! Test harness shared by the black-box tests in `tests/`.
//!
//! - `kafka`: fetches Apache Kafka from Maven Central (cached under `target/`)
//!   and runs one KRaft node on a free loopback port for the test run.
//! - `server`: starts the real `corecast` binary on free ports and talks to it
//!   over real sockets (goim clients per transport).
//! - `client`: one goim client over either transport, for tests that run the
//!   same steps over TCP and WebSocket.
//! - `http`: a minimal HTTP/1.1 client for the control API (single requests,
//!   pipelined replies, Prometheus samples).

pub mod client;
pub mod http;
pub mod kafka;
pub mod server;
