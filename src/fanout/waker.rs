//! Sleeping flag + eventfd of one shard, and the process-wide shutdown
//! trigger that reuses them.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// Wakes one shard out of `io_uring_enter` by writing its eventfd, but only
/// when the shard announced it is going to sleep.
#[derive(Debug)]
pub struct Waker {
    sleeping: AtomicBool,
    stop: AtomicBool,
    eventfd: OwnedFd,
}

impl Waker {
    pub(crate) fn new() -> std::io::Result<Waker> {
        // SAFETY: plain syscall; the returned fd is checked and then owned.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh, valid descriptor nobody else owns.
        let eventfd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Waker {
            sleeping: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            eventfd,
        })
    }

    /// Producer side, after publishing into the ring: write the eventfd if
    /// (and only if) the shard sleeps. Clearing the flag makes a burst of
    /// pushes cost a single write.
    #[inline]
    pub fn wake_if_sleeping(&self) {
        fence(Ordering::SeqCst);
        if self.sleeping.load(Ordering::Relaxed) && self.sleeping.swap(false, Ordering::AcqRel) {
            self.write_eventfd();
        }
    }

    /// Writes the eventfd unconditionally (shutdown, tests).
    pub fn wake(&self) {
        self.sleeping.store(false, Ordering::Release);
        self.write_eventfd();
    }

    fn write_eventfd(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to an eventfd we own. A full
        // counter (EAGAIN) already means "wake", so the result is ignored.
        unsafe {
            libc::write(self.eventfd.as_raw_fd(), (&one as *const u64).cast(), 8);
        }
    }

    pub(crate) fn set_sleeping(&self) {
        self.sleeping.store(true, Ordering::Relaxed);
        fence(Ordering::SeqCst);
    }

    pub(crate) fn clear_sleeping(&self) {
        self.sleeping.store(false, Ordering::Relaxed);
    }

    /// Whether the shard announced it is about to block.
    pub fn is_sleeping(&self) -> bool {
        self.sleeping.load(Ordering::Acquire)
    }

    /// The shard's eventfd.
    pub fn eventfd(&self) -> RawFd {
        self.eventfd.as_raw_fd()
    }

    /// Reads (and resets) the eventfd counter without blocking; 0 if unset.
    pub fn drain_eventfd(&self) -> u64 {
        let mut v: u64 = 0;
        // SAFETY: reads 8 bytes into a live u64 from a non-blocking eventfd.
        let n = unsafe { libc::read(self.eventfd.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
        if n == 8 {
            v
        } else {
            0
        }
    }

    /// Whether shutdown was requested for this shard (see [`Shutdown`]).
    pub fn shutdown_requested(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// Sets this shard's stop flag and wakes it.
    pub fn request_shutdown(&self) {
        self.stop.store(true, Ordering::Release);
        self.wake();
    }
}

/// Process-wide shutdown trigger (signals, fatal errors): sets every
/// registered shard's stop flag and wakes it. Usable from any thread; this is
/// how a signal thread stops shards without being a ring producer.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    inner: Arc<ShutdownInner>,
}

#[derive(Debug, Default)]
struct ShutdownInner {
    requested: AtomicBool,
    wakers: Mutex<Vec<Arc<Waker>>>,
}

impl Shutdown {
    pub fn new() -> Shutdown {
        Shutdown::default()
    }

    /// Adds a shard to stop on [`trigger`](Self::trigger).
    pub fn register(&self, waker: Arc<Waker>) {
        if self.is_requested() {
            waker.request_shutdown();
        }
        self.inner
            .wakers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(waker);
    }

    /// Requests shutdown of every registered shard (idempotent).
    pub fn trigger(&self) {
        self.inner.requested.store(true, Ordering::Release);
        for w in self
            .inner
            .wakers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            w.request_shutdown();
        }
    }

    /// Whether [`trigger`](Self::trigger) was called.
    pub fn is_requested(&self) -> bool {
        self.inner.requested.load(Ordering::Acquire)
    }
}
