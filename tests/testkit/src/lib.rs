//! Test harness shared by the black-box tests in `tests/`.
//!
//! - `kafka`: fetches Apache Kafka from Maven Central (cached under `target/`)
//!   and runs one KRaft node on a free loopback port for the test run.
//! - `server`: starts the real `corecast` binary on free ports and talks to it
//!   over real sockets.

pub mod kafka;
pub mod server;
