//! Record batch v2 decoding (Kafka's on-disk and on-wire format), I/O free
//! and zero copy: keys, values and headers are `Bytes` slices of the fetch
//! response (or of the decompressed buffer of a compressed batch).
//!
//! A fetch response's `records` field is a sequence of batches; the last one
//! may be cut short by the fetch size limit (it is then ignored and fetched
//! again from its base offset). A batch may start before the fetch offset
//! (compressed batches are returned whole), so callers skip records below it.

use bytes::{Buf, Bytes};
use kafka_protocol::compression::{Decompressor, Gzip, Lz4, Snappy, Zstd};

/// Bytes of the batch header up to and including `records_count`.
pub const BATCH_HEADER_LEN: usize = 61;
/// Offset of the `magic` byte; bytes 0..12 (base offset, length) are shared
/// with the old (v0/v1) message sets.
const MAGIC_AT: usize = 16;
const CRC_AT: usize = 17;
const ATTRIBUTES_AT: usize = 21;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum BatchError {
    #[error("record batch truncated")]
    Truncated,
    #[error("record batch magic {0} unsupported (only v2)")]
    Magic(i8),
    #[error("record batch CRC mismatch (stored {stored:#x}, computed {computed:#x})")]
    Crc { stored: u32, computed: u32 },
    #[error("unknown compression codec {0}")]
    Codec(u8),
    #[error("decompression failed: {0}")]
    Decompress(String),
    #[error("malformed record: {0}")]
    Record(&'static str),
}

/// Compression codec of a batch (attributes bits 0–2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

/// The fixed header of one record batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: i64,
    /// Bytes after the `batch_length` field.
    pub batch_length: i32,
    pub magic: i8,
    pub crc: u32,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub records_count: i32,
}

impl BatchHeader {
    /// Offset of the last record the batch covers (even if compacted away).
    pub fn last_offset(&self) -> i64 {
        self.base_offset + i64::from(self.last_offset_delta)
    }

    pub fn is_control(&self) -> bool {
        self.attributes & 0x20 != 0
    }

    pub fn is_transactional(&self) -> bool {
        self.attributes & 0x10 != 0
    }

    pub fn codec(&self) -> Result<Codec, BatchError> {
        match self.attributes & 0x07 {
            0 => Ok(Codec::None),
            1 => Ok(Codec::Gzip),
            2 => Ok(Codec::Snappy),
            3 => Ok(Codec::Lz4),
            4 => Ok(Codec::Zstd),
            c => Err(BatchError::Codec(c as u8)),
        }
    }
}

/// One batch as found in a fetch response: header plus its (possibly
/// compressed) records section.
#[derive(Debug, Clone)]
pub struct RawBatch {
    pub header: BatchHeader,
    /// The whole batch from `attributes` on (what the CRC covers).
    crc_region: Bytes,
    records: Bytes,
}

/// Splits a `records` field into batches.
///
/// Yields `Err` for a batch whose header is unusable (magic ≠ 2); the
/// iterator still moves past it using its length, which all formats share.
#[derive(Debug, Clone)]
pub struct Batches {
    buf: Bytes,
}

impl Batches {
    pub fn new(records: Bytes) -> Batches {
        Batches { buf: records }
    }
}

/// An entry [`Batches`] could not decode but could step over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedBatch {
    pub base_offset: i64,
    pub error: BatchError,
}

impl Iterator for Batches {
    type Item = Result<RawBatch, SkippedBatch>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.buf.len() < 12 {
            return None;
        }
        let b = &self.buf[..];
        let base_offset = i64::from_be_bytes(b[0..8].try_into().ok()?);
        let batch_length = i32::from_be_bytes(b[8..12].try_into().ok()?);
        let total = 12usize.checked_add(usize::try_from(batch_length).ok()?)?;
        if self.buf.len() < total {
            // Partial trailing batch: fetched again from its offset next time.
            return None;
        }
        let batch = self.buf.split_to(total);
        if total < BATCH_HEADER_LEN {
            return Some(Err(SkippedBatch {
                base_offset,
                error: BatchError::Truncated,
            }));
        }
        let magic = batch[MAGIC_AT] as i8;
        if magic != 2 {
            return Some(Err(SkippedBatch {
                base_offset,
                error: BatchError::Magic(magic),
            }));
        }
        let mut h = &batch[CRC_AT..BATCH_HEADER_LEN];
        let crc = h.get_u32();
        let attributes = h.get_i16();
        let last_offset_delta = h.get_i32();
        let base_timestamp = h.get_i64();
        let _max_timestamp = h.get_i64();
        let _producer_id = h.get_i64();
        let _producer_epoch = h.get_i16();
        let _base_sequence = h.get_i32();
        let records_count = h.get_i32();
        Some(Ok(RawBatch {
            header: BatchHeader {
                base_offset,
                batch_length,
                magic,
                crc,
                attributes,
                last_offset_delta,
                base_timestamp,
                records_count,
            },
            crc_region: batch.slice(ATTRIBUTES_AT..),
            records: batch.slice(BATCH_HEADER_LEN..),
        }))
    }
}

/// Offset to fetch after the whole batches in `records` (None if there are
/// none): what a pipelined next fetch asks for before this one is decoded.
pub fn next_offset_after(records: &Bytes) -> Option<i64> {
    let mut next = None;
    let mut buf = &records[..];
    while buf.len() >= BATCH_HEADER_LEN {
        let base = i64::from_be_bytes(buf[0..8].try_into().ok()?);
        let len = usize::try_from(i32::from_be_bytes(buf[8..12].try_into().ok()?)).ok()?;
        if buf.len() < 12 + len {
            break;
        }
        if buf[MAGIC_AT] == 2 && len + 12 >= BATCH_HEADER_LEN {
            let delta = i32::from_be_bytes(buf[23..27].try_into().ok()?);
            next = Some(base + i64::from(delta) + 1);
        } else {
            // Old message set entry: its offset is that of its last message.
            next = Some(base + 1);
        }
        buf = &buf[12 + len..];
    }
    next
}

impl RawBatch {
    /// Checks the CRC-32C over everything from `attributes` on.
    pub fn verify_crc(&self) -> Result<(), BatchError> {
        let computed = crc32c::crc32c(&self.crc_region);
        if computed != self.header.crc {
            return Err(BatchError::Crc {
                stored: self.header.crc,
                computed,
            });
        }
        Ok(())
    }

    /// The records, decompressing the section first if needed.
    pub fn records(&self) -> Result<Records, BatchError> {
        let data = match self.header.codec()? {
            Codec::None => self.records.clone(),
            codec => decompress(codec, self.records.clone())?,
        };
        Ok(Records {
            buf: data,
            pos: 0,
            base_offset: self.header.base_offset,
            base_timestamp: self.header.base_timestamp,
            left: self.header.records_count.max(0) as u32,
        })
    }
}

fn decompress(codec: Codec, mut data: Bytes) -> Result<Bytes, BatchError> {
    let take = |b: &mut Bytes| -> anyhow::Result<Bytes> { Ok(b.copy_to_bytes(b.remaining())) };
    let out = match codec {
        Codec::None => Ok(data),
        Codec::Gzip => Gzip::decompress(&mut data, take),
        Codec::Snappy => Snappy::decompress(&mut data, take),
        Codec::Lz4 => Lz4::decompress(&mut data, take),
        Codec::Zstd => Zstd::decompress(&mut data, take),
    };
    out.map_err(|e| BatchError::Decompress(format!("{codec:?}: {e:#}")))
}

/// Where a record's parts lie in its batch's records buffer.
#[derive(Debug, Clone, Copy)]
struct Layout {
    offset: i64,
    timestamp: i64,
    key: Option<(u32, u32)>,
    value: Option<(u32, u32)>,
    /// Start of the encoded headers (their count already read); they run to
    /// the end of the record.
    headers: (u32, u32),
    header_count: u32,
}

impl Layout {
    fn key<'a>(&self, buf: &'a [u8]) -> Option<&'a [u8]> {
        self.key.map(|(s, e)| &buf[s as usize..e as usize])
    }

    fn value<'a>(&self, buf: &'a [u8]) -> Option<&'a [u8]> {
        self.value.map(|(s, e)| &buf[s as usize..e as usize])
    }

    fn header<'a>(&self, buf: &'a [u8], name: &[u8]) -> Option<Option<&'a [u8]>> {
        let mut cur = Cursor {
            b: &buf[..self.headers.1 as usize],
            pos: self.headers.0 as usize,
        };
        for _ in 0..self.header_count {
            let k = cur.bytes().ok()??;
            let v = cur.bytes().ok()?;
            if &cur.b[k.0..k.1] == name {
                return Some(v.map(|(s, e)| &cur.b[s..e]));
            }
        }
        None
    }
}

/// One record of a batch: offsets into the batch's (decompressed) records
/// buffer, which it shares. Accessors slice it without copying.
#[derive(Debug, Clone)]
pub struct RawRecord {
    pub offset: i64,
    pub timestamp: i64,
    buf: Bytes,
    at: Layout,
}

impl RawRecord {
    pub fn key(&self) -> Option<&[u8]> {
        self.at.key(&self.buf)
    }

    /// The value as a zero-copy slice of the fetch buffer.
    pub fn value(&self) -> Option<Bytes> {
        self.at
            .value
            .map(|(s, e)| self.buf.slice(s as usize..e as usize))
    }

    pub fn value_bytes(&self) -> Option<&[u8]> {
        self.at.value(&self.buf)
    }

    /// Value of the first header named `name` (`Some(None)` for a null value).
    pub fn header(&self, name: &[u8]) -> Option<Option<&[u8]>> {
        self.at.header(&self.buf, name)
    }

    pub fn header_count(&self) -> u32 {
        self.at.header_count
    }

    /// The same record, borrowed.
    pub fn as_ref(&self) -> RecordRef<'_> {
        RecordRef {
            offset: self.offset,
            timestamp: self.timestamp,
            buf: &self.buf,
            at: self.at,
        }
    }
}

/// A record borrowed from its batch's buffer ([`Records::next_ref`]): no
/// reference counting per record, for the ingest hot path.
#[derive(Debug, Clone, Copy)]
pub struct RecordRef<'a> {
    pub offset: i64,
    pub timestamp: i64,
    buf: &'a [u8],
    at: Layout,
}

impl<'a> RecordRef<'a> {
    pub fn key(&self) -> Option<&'a [u8]> {
        self.at.key(self.buf)
    }

    pub fn value(&self) -> Option<&'a [u8]> {
        self.at.value(self.buf)
    }

    /// Value of the first header named `name` (`Some(None)` for a null value).
    pub fn header(&self, name: &[u8]) -> Option<Option<&'a [u8]>> {
        self.at.header(self.buf, name)
    }

    pub fn header_count(&self) -> u32 {
        self.at.header_count
    }
}

/// Iterator over the records of one batch. After an `Err` the rest of the
/// batch cannot be located and the iterator ends.
#[derive(Debug, Clone)]
pub struct Records {
    buf: Bytes,
    pos: usize,
    base_offset: i64,
    base_timestamp: i64,
    left: u32,
}

impl Iterator for Records {
    type Item = Result<RawRecord, BatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        let at = self.next_layout()?;
        Some(at.map(|at| RawRecord {
            offset: at.offset,
            timestamp: at.timestamp,
            buf: self.buf.clone(),
            at,
        }))
    }
}

impl Records {
    /// Like [`Iterator::next`], borrowing the record from the batch buffer.
    #[inline]
    pub fn next_ref(&mut self) -> Option<Result<RecordRef<'_>, BatchError>> {
        let at = self.next_layout()?;
        Some(at.map(|at| RecordRef {
            offset: at.offset,
            timestamp: at.timestamp,
            buf: &self.buf,
            at,
        }))
    }

    #[inline]
    fn next_layout(&mut self) -> Option<Result<Layout, BatchError>> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let r = self.parse_one();
        if r.is_err() {
            self.left = 0;
        }
        Some(r)
    }

    #[inline]
    fn parse_one(&mut self) -> Result<Layout, BatchError> {
        if self.buf.len() > u32::MAX as usize {
            return Err(BatchError::Record("batch too large"));
        }
        let mut cur = Cursor {
            b: &self.buf[..],
            pos: self.pos,
        };
        let len = cur.varint()?;
        let len = usize::try_from(len).map_err(|_| BatchError::Record("negative length"))?;
        let end = cur.pos.checked_add(len).ok_or(BatchError::Truncated)?;
        if end > self.buf.len() {
            return Err(BatchError::Truncated);
        }
        let mut r = Cursor {
            b: &self.buf[..end],
            pos: cur.pos,
        };
        if r.pos >= end {
            return Err(BatchError::Record("empty record"));
        }
        r.pos += 1; // attributes (unused)
        let ts_delta = r.varint()?;
        let offset_delta = r.varint()?;
        let key = r.bytes()?;
        let value = r.bytes()?;
        let header_count = r.varint()?;
        let header_count =
            u32::try_from(header_count).map_err(|_| BatchError::Record("negative header count"))?;
        let headers = (r.pos as u32, end as u32);
        self.pos = end;
        let narrow = |x: Option<(usize, usize)>| x.map(|(s, e)| (s as u32, e as u32));
        Ok(Layout {
            offset: self.base_offset + offset_delta,
            timestamp: self.base_timestamp.wrapping_add(ts_delta),
            key: narrow(key),
            value: narrow(value),
            headers,
            header_count,
        })
    }
}

/// Reading position in a record buffer.
struct Cursor<'a> {
    b: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    /// Zigzag varint (Kafka's varint / varlong).
    #[inline]
    fn varint(&mut self) -> Result<i64, BatchError> {
        let mut v = 0u64;
        let mut shift = 0u32;
        loop {
            let Some(&b) = self.b.get(self.pos) else {
                return Err(BatchError::Truncated);
            };
            if shift > 63 {
                return Err(BatchError::Record("varint too long"));
            }
            self.pos += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(((v >> 1) as i64) ^ -((v & 1) as i64));
            }
            shift += 7;
        }
    }

    /// Varint length (-1 = null) then that many bytes: their range.
    #[inline]
    fn bytes(&mut self) -> Result<Option<(usize, usize)>, BatchError> {
        let len = self.varint()?;
        if len < 0 {
            return Ok(None);
        }
        let start = self.pos;
        let end = start
            .checked_add(len as usize)
            .ok_or(BatchError::Truncated)?;
        if end > self.b.len() {
            return Err(BatchError::Truncated);
        }
        self.pos = end;
        Ok(Some((start, end)))
    }
}

#[cfg(test)]
mod tests;
