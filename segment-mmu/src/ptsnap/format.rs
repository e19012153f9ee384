//! `.ptsnap` reader and writer (format described in the parent module).

use std::io::{Read, Write};

use super::{AddressSpace, Error, HostRun, Ptsnap, RamRange};
use crate::bytes::{self, fnv1a, Reader};
use crate::mem::{PageStore, PAGE_SIZE};
use crate::paging::PagingMode;

/// File magic.
pub const MAGIC: [u8; 8] = *b"PTSNAP\r\n";
/// Current format version.
pub const VERSION: u32 = 1;
const RUNS_UNKNOWN: u32 = u32::MAX;

impl Ptsnap {
    /// Serialises to the `.ptsnap` format.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(64 + self.pages.len() * (PAGE_SIZE as usize + 8));
        b.extend_from_slice(&MAGIC);
        b.extend_from_slice(&VERSION.to_le_bytes());
        b.extend_from_slice(&(self.mode.levels() as u32).to_le_bytes());
        b.extend_from_slice(&self.cr4.to_le_bytes());
        b.extend_from_slice(&self.efer.to_le_bytes());
        b.extend_from_slice(&(self.spaces.len() as u32).to_le_bytes());
        for s in &self.spaces {
            b.extend_from_slice(&s.cr3.to_le_bytes());
            b.extend_from_slice(&(s.label.len() as u32).to_le_bytes());
            b.extend_from_slice(s.label.as_bytes());
        }
        b.extend_from_slice(&(self.ram.len() as u32).to_le_bytes());
        for r in &self.ram {
            for v in [r.gpa_start, r.len, r.host_va, r.host_page_size] {
                b.extend_from_slice(&v.to_le_bytes());
            }
            match &r.runs {
                None => b.extend_from_slice(&RUNS_UNKNOWN.to_le_bytes()),
                Some(runs) => {
                    b.extend_from_slice(&(runs.len() as u32).to_le_bytes());
                    for run in runs {
                        for v in [run.gpa_start, run.len, run.hpa_start] {
                            b.extend_from_slice(&v.to_le_bytes());
                        }
                    }
                }
            }
        }
        b.extend_from_slice(&(self.pages.len() as u64).to_le_bytes());
        for (gpa, page) in self.pages.iter() {
            b.extend_from_slice(&gpa.to_le_bytes());
            for w in page {
                b.extend_from_slice(&w.to_le_bytes());
            }
        }
        let sum = fnv1a(&b);
        b.extend_from_slice(&sum.to_le_bytes());
        b
    }

    /// Writes the `.ptsnap` bytes to `w`.
    pub fn write_to(&self, w: &mut impl Write) -> Result<(), Error> {
        w.write_all(&self.to_bytes())
            .map_err(|e| Error::Io(e.to_string()))
    }

    /// Reads a whole `.ptsnap` stream.
    pub fn read_from(r: &mut impl Read) -> Result<Self, Error> {
        let mut buf = Vec::new();
        r.read_to_end(&mut buf)
            .map_err(|e| Error::Io(e.to_string()))?;
        Self::from_bytes(&buf)
    }

    /// Parses and validates `.ptsnap` bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, Error> {
        let mut c = Reader::new(bytes, 0);
        if c.bytes(8, "magic")? != MAGIC {
            return Err(Error::BadMagic);
        }
        let version = c.u32("header")?;
        if version != VERSION {
            return Err(Error::BadVersion(version));
        }
        let levels = c.u32("header")?;
        let mode =
            PagingMode::from_levels(levels as u64).map_err(|e| Error::BadMode(e.to_string()))?;
        let cr4 = c.u64("header")?;
        let efer = c.u64("header")?;
        let n = c.u32("header")? as usize;
        // Each space needs at least 12 bytes: bound the allocation by what is left.
        let mut spaces = Vec::with_capacity(n.min(c.left() / 12));
        for i in 0..n {
            let cr3 = c.u64("header")?;
            let len = c.u32("header")? as usize;
            let label = std::str::from_utf8(c.bytes(len, "label")?)
                .map_err(|_| Error::BadLabel(i))?
                .to_string();
            spaces.push(AddressSpace { cr3, label });
        }
        let n = c.u32("header")? as usize;
        let mut ram = Vec::with_capacity(n.min(c.left() / 36));
        for _ in 0..n {
            let (gpa_start, len, host_va, host_page_size) = (
                c.u64("header")?,
                c.u64("header")?,
                c.u64("header")?,
                c.u64("header")?,
            );
            let nr = c.u32("header")?;
            let runs = if nr == RUNS_UNKNOWN {
                None
            } else {
                let mut runs = Vec::with_capacity((nr as usize).min(c.left() / 24));
                for _ in 0..nr {
                    runs.push(HostRun {
                        gpa_start: c.u64("header")?,
                        len: c.u64("header")?,
                        hpa_start: c.u64("header")?,
                    });
                }
                Some(runs)
            };
            ram.push(RamRange {
                gpa_start,
                len,
                host_va,
                host_page_size,
                runs,
            });
        }
        let n = c.u64("header")?;
        let mut pages = PageStore::new();
        for _ in 0..n {
            let gpa = c.u64("header")?;
            let raw = c.bytes(PAGE_SIZE as usize, "page")?;
            let mut words = [0u64; 512];
            for (w, chunk) in words.iter_mut().zip(raw.chunks_exact(8)) {
                *w = u64::from_le_bytes(chunk.try_into().unwrap_or([0; 8]));
            }
            if gpa % PAGE_SIZE != 0 {
                return Err(Error::UnalignedTable(gpa));
            }
            if pages.contains(gpa) {
                return Err(Error::DuplicateTable(gpa));
            }
            pages.insert(gpa, words);
        }
        let body_end = c.offset();
        let stored = c.u64("header")?;
        let computed = fnv1a(&bytes[..body_end]);
        if stored != computed {
            return Err(Error::BadChecksum { stored, computed });
        }
        if c.left() != 0 {
            return Err(Error::TrailingBytes(c.left()));
        }
        let mut snap = Ptsnap {
            mode,
            cr4,
            efer,
            spaces,
            ram,
            pages,
        };
        snap.validate()?;
        snap.optimize();
        Ok(snap)
    }
}

impl From<bytes::Error> for Error {
    fn from(e: bytes::Error) -> Self {
        match e {
            bytes::Error::Truncated { offset, needed, .. } => Error::Truncated { offset, needed },
            bytes::Error::Varint { offset, .. } => Error::Truncated { offset, needed: 1 },
        }
    }
}
