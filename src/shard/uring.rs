//! io_uring plumbing of a shard: ring setup with the best flags the kernel
//! takes, the provided-buffer ring, and the user_data encoding.

use std::io;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::types::BufRingEntry;
use io_uring::IoUring;

/// What a completion belongs to (top byte of user_data).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    Accept = 1,
    Recv = 2,
    Send = 3,
    Close = 4,
    Cancel = 5,
    EventFd = 6,
    Tick = 7,
}

const GEN_MASK: u32 = 0x00ff_ffff;

/// user_data = kind (8 bits) | generation (24 bits) | slab key (32 bits).
/// The generation tells completions of a closed connection from those of a
/// new one that reuses its slab key.
#[inline]
pub fn encode_ud(kind: Kind, gen: u32, key: u32) -> u64 {
    ((kind as u64) << 56) | (((gen & GEN_MASK) as u64) << 32) | key as u64
}

#[inline]
pub fn decode_ud(ud: u64) -> (u8, u32, u32) {
    ((ud >> 56) as u8, ((ud >> 32) as u32) & GEN_MASK, ud as u32)
}

/// Masks a generation counter to what user_data carries.
#[inline]
pub fn gen_bits(gen: u32) -> u32 {
    gen & GEN_MASK
}

/// Which optional setup flags the ring got.
#[derive(Debug, Clone, Copy)]
pub struct RingFeatures {
    pub single_issuer_defer_taskrun: bool,
    pub coop_taskrun: bool,
}

/// Builds the shard's ring: `SINGLE_ISSUER | DEFER_TASKRUN | TASKRUN_FLAG`
/// when the kernel has them (task work runs only when the shard enters the
/// kernel, no IPIs), else `COOP_TASKRUN`, else plain. Must be called on the
/// shard thread (single issuer).
pub fn build_ring(entries: u32) -> io::Result<(IoUring, RingFeatures)> {
    let cq = (entries * 4).min(1 << 16);
    let r = IoUring::builder()
        .setup_cqsize(cq)
        .setup_submit_all()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_taskrun_flag()
        .build(entries);
    if let Ok(ring) = r {
        return Ok((
            ring,
            RingFeatures {
                single_issuer_defer_taskrun: true,
                coop_taskrun: false,
            },
        ));
    }
    let r = IoUring::builder()
        .setup_cqsize(cq)
        .setup_submit_all()
        .setup_coop_taskrun()
        .setup_taskrun_flag()
        .build(entries);
    if let Ok(ring) = r {
        return Ok((
            ring,
            RingFeatures {
                single_issuer_defer_taskrun: false,
                coop_taskrun: true,
            },
        ));
    }
    let ring = IoUring::builder().setup_cqsize(cq).build(entries)?;
    Ok((
        ring,
        RingFeatures {
            single_issuer_defer_taskrun: false,
            coop_taskrun: false,
        },
    ))
}

/// A provided-buffer ring (IORING_REGISTER_PBUF_RING) shared by all
/// connections of a shard: the kernel picks a buffer per receive, the shard
/// hands it back as soon as the bytes are parsed.
pub struct BufRing {
    entries_ptr: *mut BufRingEntry,
    entries_len: usize,
    mask: u16,
    tail: u16,
    bufs: Vec<u8>,
    buf_size: usize,
}

impl BufRing {
    /// Allocates `count` (power of two) buffers of `buf_size` and registers
    /// them with `ring` as group `bgid`.
    pub fn new(ring: &IoUring, count: u16, buf_size: usize, bgid: u16) -> io::Result<BufRing> {
        assert!(count.is_power_of_two());
        let entries_len = count as usize * std::mem::size_of::<BufRingEntry>();
        // SAFETY: anonymous private mapping, page aligned as the kernel
        // requires for a buffer ring; checked for failure below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                entries_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let mut br = BufRing {
            entries_ptr: ptr.cast(),
            entries_len,
            mask: count - 1,
            tail: 0,
            bufs: vec![0u8; count as usize * buf_size],
            buf_size,
        };
        // SAFETY: the mapping lives as long as `br`, which unregisters it on
        // drop (and the ring is dropped before `br` by the shard).
        unsafe {
            ring.submitter()
                .register_buf_ring_with_flags(ptr as u64, count, bgid, 0)?
        };
        for bid in 0..count {
            br.put(bid);
        }
        br.publish();
        Ok(br)
    }

    #[inline]
    fn put(&mut self, bid: u16) {
        let idx = (self.tail & self.mask) as usize;
        // SAFETY: idx < count; the entry is ours until the tail passes it.
        let e = unsafe { &mut *self.entries_ptr.add(idx) };
        e.set_addr(self.bufs.as_ptr() as u64 + bid as u64 * self.buf_size as u64);
        e.set_len(self.buf_size as u32);
        e.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    #[inline]
    fn publish(&self) {
        // SAFETY: the tail field lives inside the first entry of the mapping;
        // the kernel reads it with acquire semantics.
        unsafe {
            let tail = BufRingEntry::tail(self.entries_ptr) as *const AtomicU16;
            (*tail).store(self.tail, Ordering::Release);
        }
    }

    /// Gives buffer `bid` back to the kernel.
    #[inline]
    pub fn recycle(&mut self, bid: u16) {
        self.put(bid);
        self.publish();
    }

    /// The first `len` bytes of buffer `bid`, writable (WS frames are
    /// unmasked in place). The slice must be dropped before `recycle(bid)`.
    ///
    /// # Safety
    /// `bid` must be a buffer the kernel handed out and not yet recycled, and
    /// the returned slice must not outlive that.
    #[inline]
    pub unsafe fn buf<'a>(&mut self, bid: u16, len: usize) -> &'a mut [u8] {
        let start = bid as usize * self.buf_size;
        let p = self.bufs.as_mut_ptr().add(start);
        std::slice::from_raw_parts_mut(p, len.min(self.buf_size))
    }

    /// Bytes of user memory this ring holds.
    pub fn memory(&self) -> usize {
        self.bufs.len() + self.entries_len
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: unmaps the mapping created in `new`; the kernel side is
        // gone once the ring was dropped (the shard drops the ring first).
        unsafe {
            libc::munmap(self.entries_ptr.cast(), self.entries_len);
        }
    }
}
