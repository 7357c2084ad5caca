//! hyper 1.x I/O over glommio sockets.
//!
//! hyper talks to its transport through `hyper::rt::{Read, Write}`; glommio's
//! `TcpStream` speaks `futures_lite::{AsyncRead, AsyncWrite}`. This adapter
//! bridges the two and records the time of the last byte moved, so the
//! connection task can close idle connections without a hyper `Timer`
//! (hyper's timers must be `Send`, glommio's are not). It also counts the
//! whole requests read ([`RequestCounter`]) and can stop reading (the
//! per-connection request cap), so that the server answers every request it
//! read before closing.

use std::cell::Cell;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{ready, Context, Poll};
use std::time::Instant;

use futures_lite::{AsyncRead, AsyncWrite};

use super::request_count::RequestCounter;

/// Size of the intermediate read buffer. The control API carries small
/// requests; a copy through this buffer keeps the adapter free of `unsafe`.
const READ_CHUNK: usize = 8 * 1024;

/// What the connection task and its I/O share about the request stream.
#[derive(Debug, Default)]
pub struct ReadGate {
    /// Whole requests read so far (frozen once the stream can't be framed).
    pub requests_read: Cell<u64>,
    /// Set at the request cap: reads return end-of-file from then on, so
    /// hyper answers what it has read and then closes.
    pub stop_reading: Cell<bool>,
}

/// A glommio stream seen through hyper's I/O traits.
pub struct HyperIo<S> {
    inner: S,
    scratch: Box<[u8]>,
    last_activity: Rc<Cell<Instant>>,
    counter: RequestCounter,
    gate: Rc<ReadGate>,
}

impl<S> HyperIo<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            scratch: vec![0u8; READ_CHUNK].into_boxed_slice(),
            last_activity: Rc::new(Cell::new(Instant::now())),
            counter: RequestCounter::default(),
            gate: Rc::default(),
        }
    }

    /// Shared cell holding the instant of the last successful read or write.
    pub fn activity(&self) -> Rc<Cell<Instant>> {
        Rc::clone(&self.last_activity)
    }

    /// Shared request count and stop switch of this connection.
    pub fn gate(&self) -> Rc<ReadGate> {
        Rc::clone(&self.gate)
    }

    /// The wrapped stream.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: AsyncRead + Unpin> hyper::rt::Read for HyperIo<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let want = buf.remaining().min(this.scratch.len());
        if want == 0 || this.gate.stop_reading.get() {
            return Poll::Ready(Ok(()));
        }
        let n = ready!(Pin::new(&mut this.inner).poll_read(cx, &mut this.scratch[..want]))?;
        if n > 0 {
            this.last_activity.set(Instant::now());
            this.counter.feed(&this.scratch[..n]);
            this.gate.requests_read.set(this.counter.complete());
        }
        buf.put_slice(&this.scratch[..n]);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> hyper::rt::Write for HyperIo<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let n = ready!(Pin::new(&mut this.inner).poll_write(cx, buf))?;
        this.last_activity.set(Instant::now());
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_close(cx)
    }
}

/// Runs hyper's background futures on the current glommio executor.
#[derive(Clone, Copy, Debug, Default)]
pub struct GlommioExecutor;

impl<F> hyper::rt::Executor<F> for GlommioExecutor
where
    F: std::future::Future + 'static,
{
    fn execute(&self, fut: F) {
        glommio::spawn_local(fut).detach();
    }
}
