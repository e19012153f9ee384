//! The embedded measurement-guest image (built by build.rs from `guest-kernels/probe`) and
//! a minimal ELF64 reader for it: the guest is a static executable whose PT_LOAD segments
//! are loaded at their physical addresses; nothing else of ELF is needed.

use segment_mmu::bytes::Reader;
use workloads::protocol::{IMAGE_BASE, IMAGE_LIMIT};

/// The measurement guest, a static ELF64 executable linked at `IMAGE_BASE`.
pub const PROBE_ELF: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/probe.elf"));

/// Errors reading the image.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// Not an ELF64 little-endian x86-64 executable.
    #[error("guest image: {0}")]
    Format(&'static str),
    /// A segment outside the image window.
    #[error("guest image: segment at {paddr:#x}+{memsz:#x} lies outside [{IMAGE_BASE:#x}, {IMAGE_LIMIT:#x})")]
    OutOfWindow {
        /// Physical address.
        paddr: u64,
        /// Size in memory.
        memsz: u64,
    },
}

/// One loadable segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Guest-physical (= virtual) address.
    pub paddr: u64,
    /// Offset of its bytes in the file.
    pub offset: usize,
    /// Bytes in the file.
    pub filesz: usize,
    /// Bytes in memory (the rest is zero: .bss).
    pub memsz: u64,
}

/// A parsed image.
#[derive(Debug, Clone)]
pub struct Image<'a> {
    /// The file.
    pub bytes: &'a [u8],
    /// Entry point.
    pub entry: u64,
    /// Loadable segments.
    pub segments: Vec<Segment>,
}

// ELF fields by offset, through the workspace's one bounds-checked reader.
fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    b.get(off..).and_then(|t| Reader::new(t, 0).u16("elf").ok())
}
fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    b.get(off..).and_then(|t| Reader::new(t, 0).u32("elf").ok())
}
fn u64_at(b: &[u8], off: usize) -> Option<u64> {
    b.get(off..).and_then(|t| Reader::new(t, 0).u64("elf").ok())
}

impl<'a> Image<'a> {
    /// Parses `bytes` and checks every segment lies in the image window.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, Error> {
        const PT_LOAD: u32 = 1;
        if bytes.get(0..4) != Some(b"\x7fELF")
            || bytes.get(4) != Some(&2)
            || bytes.get(5) != Some(&1)
        {
            return Err(Error::Format("not an ELF64 little-endian file"));
        }
        if u16_at(bytes, 18) != Some(62) {
            return Err(Error::Format("not x86-64"));
        }
        let entry = u64_at(bytes, 24).ok_or(Error::Format("truncated header"))?;
        let phoff = u64_at(bytes, 32).ok_or(Error::Format("truncated header"))? as usize;
        let phentsize = usize::from(u16_at(bytes, 54).ok_or(Error::Format("truncated header"))?);
        let phnum = usize::from(u16_at(bytes, 56).ok_or(Error::Format("truncated header"))?);
        let mut segments = Vec::new();
        for i in 0..phnum {
            let ph = phoff + i * phentsize;
            let kind = u32_at(bytes, ph).ok_or(Error::Format("truncated program header"))?;
            if kind != PT_LOAD {
                continue;
            }
            let field = |o| u64_at(bytes, ph + o).ok_or(Error::Format("truncated program header"));
            let (offset, paddr, filesz, memsz) = (field(8)?, field(24)?, field(32)?, field(40)?);
            if filesz > memsz
                || offset
                    .checked_add(filesz)
                    .is_none_or(|e| e > bytes.len() as u64)
            {
                return Err(Error::Format("segment exceeds the file"));
            }
            if paddr < IMAGE_BASE || paddr.checked_add(memsz).is_none_or(|e| e > IMAGE_LIMIT) {
                return Err(Error::OutOfWindow { paddr, memsz });
            }
            segments.push(Segment {
                paddr,
                offset: offset as usize,
                filesz: filesz as usize,
                memsz,
            });
        }
        if segments.is_empty() {
            return Err(Error::Format("no loadable segment"));
        }
        Ok(Image {
            bytes,
            entry,
            segments,
        })
    }

    /// One past the last byte any segment occupies.
    pub fn end(&self) -> u64 {
        self.segments
            .iter()
            .map(|s| s.paddr + s.memsz)
            .max()
            .unwrap_or(IMAGE_BASE)
    }

    /// The file bytes of a segment.
    pub fn data(&self, s: &Segment) -> &'a [u8] {
        &self.bytes[s.offset..s.offset + s.filesz]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use workloads::protocol::{VECTORS, VECTOR_STUB_BYTES};

    #[test]
    fn embedded_image_is_sane() {
        let img = Image::parse(PROBE_ELF).unwrap();
        assert!(img.entry > IMAGE_BASE + VECTORS * VECTOR_STUB_BYTES && img.entry < img.end());
        assert_eq!(img.segments[0].paddr, IMAGE_BASE);
        // The first vector stub (divide error) pushes a zero error code and the vector 0.
        assert_eq!(&img.data(&img.segments[0])[..4], &[0x6a, 0x00, 0x6a, 0x00]);
    }

    #[test]
    fn garbage_is_refused() {
        assert!(Image::parse(b"nope").is_err());
        let mut bad = PROBE_ELF.to_vec();
        bad[18] = 3; // i386
        assert_eq!(Image::parse(&bad).unwrap_err(), Error::Format("not x86-64"));
        assert!(Image::parse(&PROBE_ELF[..70]).is_err());
    }
}
