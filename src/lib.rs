//! corecast server (the crate doc walking the layout lands with the shards).

pub mod control;
pub mod fanout;
pub mod ingest;
