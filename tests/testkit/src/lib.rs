//! Test harness shared by the black-box tests in `tests/`.
//!
//! - `kafka`: fetches Apache Kafka from Maven Central (cached under `target/`)
//!   and runs one KRaft node on a free loopback port for the test run.
//! - `server`: starts the real `corecast` binary on free ports and calls its
//!   HTTP API.
//! - `client`: goim clients over real sockets: TCP, WebSocket, and either one
//!   behind one face for tests that run the same steps over both.
//! - `pipelined`: the upgrade request and the op-7 frame in one write, and
//!   reading the 101 + op-8 frame back (the loadgen's `--pipeline-auth`).
//! - `http`: a minimal HTTP/1.1 client for the control API (single requests,
//!   pipelined replies, Prometheus samples).

pub mod client;
pub mod http;
pub mod kafka;
pub mod pipelined;
pub mod server;
