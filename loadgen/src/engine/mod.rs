//! The io_uring client engine: many client connections per thread, each a
//! direct descriptor in the ring's registered file table (no process fd), with
//! a shared provided-buffer ring for receives, so a connection costs a few
//! dozen bytes of user space.

pub mod addr;
pub mod uring;
