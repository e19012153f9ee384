//! The binary trace format: a compact record of an address stream.
//!
//! Header: magic `b"SEGTRACE"`, version `u32` = 1, reserved `u32` = 0. Then one
//! little-endian `u64` per event: bits 0..=56 hold the virtual address (57 bits are
//! enough for LA57; the reader sign-extends bit 56 back to a canonical address), bits
//! 57..=58 the kind (0 read, 1 write, 2 unmap, 3 map), bits 59..=63 must be zero.

use std::io::{BufReader, BufWriter, Read, Write};

use super::{AddressStream, Error, Event, EventKind};

/// Trace magic.
pub const MAGIC: [u8; 8] = *b"SEGTRACE";
/// Trace version.
pub const VERSION: u32 = 1;
const VA_MASK: u64 = (1 << 57) - 1;

/// Encodes one event.
#[inline]
pub fn encode(e: &Event) -> u64 {
    let k = match e.kind {
        EventKind::Read => 0u64,
        EventKind::Write => 1,
        EventKind::Unmap => 2,
        EventKind::Map => 3,
    };
    (e.va & VA_MASK) | (k << 57)
}

/// Decodes one record.
#[inline]
pub fn decode(r: u64) -> Result<Event, Error> {
    if r >> 59 != 0 {
        return Err(Error::Trace(format!("record {r:#x} has reserved bits set")));
    }
    let va = (((r & VA_MASK) << 7) as i64 >> 7) as u64;
    let kind = match (r >> 57) & 3 {
        0 => EventKind::Read,
        1 => EventKind::Write,
        2 => EventKind::Unmap,
        _ => EventKind::Map,
    };
    Ok(Event { va, kind })
}

/// Writes a trace.
#[derive(Debug)]
pub struct TraceWriter<W: Write> {
    w: BufWriter<W>,
}

impl<W: Write> TraceWriter<W> {
    /// Writes the header.
    pub fn new(w: W) -> Result<Self, Error> {
        let mut w = BufWriter::new(w);
        let io = |e: std::io::Error| Error::Io(e.to_string());
        w.write_all(&MAGIC).map_err(io)?;
        w.write_all(&VERSION.to_le_bytes()).map_err(io)?;
        w.write_all(&0u32.to_le_bytes()).map_err(io)?;
        Ok(Self { w })
    }
    /// Appends an event.
    pub fn push(&mut self, e: &Event) -> Result<(), Error> {
        self.w
            .write_all(&encode(e).to_le_bytes())
            .map_err(|e| Error::Io(e.to_string()))
    }
    /// Flushes and returns the inner writer.
    pub fn finish(self) -> Result<W, Error> {
        self.w.into_inner().map_err(|e| Error::Io(e.to_string()))
    }
}

/// Reads a trace as an [`AddressStream`].
#[derive(Debug)]
pub struct TraceReader<R: Read> {
    r: BufReader<R>,
    len: Option<u64>,
}

impl<R: Read + Send> TraceReader<R> {
    /// Checks the header. `len_bytes` (the file size, if known) gives a length hint.
    pub fn new(r: R, len_bytes: Option<u64>) -> Result<Self, Error> {
        let mut r = BufReader::with_capacity(1 << 16, r);
        let mut h = [0u8; 16];
        r.read_exact(&mut h)
            .map_err(|_| Error::Trace("truncated header".into()))?;
        if h[..8] != MAGIC {
            return Err(Error::Trace("bad magic: not a segment-mmu trace".into()));
        }
        let v = u32::from_le_bytes([h[8], h[9], h[10], h[11]]);
        if v != VERSION {
            return Err(Error::Trace(format!("unsupported version {v}")));
        }
        Ok(Self {
            r,
            len: len_bytes.map(|b| b.saturating_sub(16) / 8),
        })
    }
}

impl<R: Read + Send> AddressStream for TraceReader<R> {
    fn next_event(&mut self) -> Result<Option<Event>, Error> {
        let mut b = [0u8; 8];
        let mut got = 0;
        while got < 8 {
            match self.r.read(&mut b[got..]) {
                Ok(0) if got == 0 => return Ok(None),
                Ok(0) => return Err(Error::Trace(format!("truncated record ({got} of 8 bytes)"))),
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::Io(e.to_string())),
            }
        }
        decode(u64::from_le_bytes(b)).map(Some)
    }
    fn len_hint(&self) -> Option<u64> {
        self.len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_truncation() {
        let evs = [
            Event::read(0x7fff_1234),
            Event::write(0xffff_8000_0000_0008),
            Event {
                va: 0x1000,
                kind: EventKind::Unmap,
            },
            Event {
                va: 0x00ff_ffff_ffff_f000,
                kind: EventKind::Map,
            },
        ];
        let mut w = TraceWriter::new(Vec::new()).unwrap();
        for e in &evs {
            w.push(e).unwrap();
        }
        let bytes = w.finish().unwrap();
        let mut r = TraceReader::new(&bytes[..], Some(bytes.len() as u64)).unwrap();
        assert_eq!(r.len_hint(), Some(4));
        for e in &evs {
            assert_eq!(r.next_event().unwrap().as_ref(), Some(e));
        }
        assert_eq!(r.next_event().unwrap(), None);
        let mut t = TraceReader::new(&bytes[..bytes.len() - 3], None).unwrap();
        let res: Vec<_> = std::iter::from_fn(|| t.next_event().transpose()).collect();
        assert!(res.last().unwrap().is_err());
        assert!(TraceReader::new(&b"NOTTRACE\x01\0\0\0\0\0\0\0"[..], None).is_err());
        assert!(decode(1 << 60).is_err());
    }
}
