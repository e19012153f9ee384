//! The bzImage fast path: decompress a bzImage's payload on the host and boot the
//! resulting vmlinux directly (64-bit entry), skipping the kernel's own decompressor.
//!
//! On a host whose KVM emulates every guest ring-0 instruction (kvm_pvm, about 1 µs
//! each), the decompressor is the slowest part of a boot: tens of millions of emulated
//! instructions before the kernel prints its first line. The host does the same work in
//! milliseconds. The kernel itself is untouched: this is exactly what a VMM that boots an
//! ELF vmlinux (Firecracker, Cloud Hypervisor) runs, extracted from the bzImage the user
//! has. The boot protocol's 32-bit size trailer checks the result.

use std::io::Read;

/// Errors while extracting the payload.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The image is too short for the fields it claims.
    #[error("bzImage header points past the end of the file (truncated?)")]
    Truncated,
    /// A compression this VMM does not decode.
    #[error("bzImage payload compression not recognised (magic {0})")]
    UnknownCompression(String),
    /// Decompression failed.
    #[error("bzImage payload ({format}) does not decompress: {why}")]
    Corrupt {
        /// Format.
        format: &'static str,
        /// Decoder's words.
        why: String,
    },
    /// The size trailer asks for more than the cap (guest RAM).
    #[error("bzImage payload says it decompresses to {size} bytes, more than the {cap}-byte cap (guest memory)")]
    TooLarge {
        /// Size the trailer states.
        size: u64,
        /// The cap.
        cap: u64,
    },
    /// The payload inflates past its own size trailer (a decompression bomb).
    #[error("bzImage payload ({format}) inflates past the {size} bytes its size trailer states; stopped there")]
    Overflow {
        /// Format.
        format: &'static str,
        /// Size the trailer states.
        size: u64,
    },
    /// The result is not an ELF image.
    #[error("bzImage payload decompressed to something that is not an ELF vmlinux")]
    NotElf,
}

/// The compression of a payload, from its magic bytes.
pub fn compression(payload: &[u8]) -> Option<&'static str> {
    match payload {
        [0x02, 0x21, 0x4c, 0x18, ..] => Some("lz4"),
        [0x1f, 0x8b, ..] => Some("gzip"),
        [0x28, 0xb5, 0x2f, 0xfd, ..] => Some("zstd"),
        [0xfd, b'7', b'z', b'X', b'Z', 0, ..] => Some("xz"),
        [b'\x7f', b'E', b'L', b'F', ..] => Some("none"),
        _ => None,
    }
}

/// Returns the decompressed vmlinux (ELF) inside bzImage `image`. Decompression never
/// produces more than the payload's size trailer states, and that must be at most `cap`
/// bytes (the guest's memory): a payload that inflates further is an error, found
/// without holding more than `size + 1` bytes.
pub fn extract_vmlinux(image: &[u8], cap: u64) -> Result<Vec<u8>, Error> {
    let u32_at = |off: usize| {
        image
            .get(off..off + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let setup_sects = match image.get(0x1f1).copied().ok_or(Error::Truncated)? {
        0 => 4,
        n => n as usize,
    };
    let offset = u32_at(0x248).ok_or(Error::Truncated)?;
    let length = u32_at(0x24c).ok_or(Error::Truncated)?;
    let start = (setup_sects + 1) * 512 + offset;
    let end = start.checked_add(length).ok_or(Error::Truncated)?;
    let payload = image.get(start..end).ok_or(Error::Truncated)?;
    if payload.len() < 8 {
        return Err(Error::Truncated);
    }
    // Every kernel compressor appends the decompressed size as a little-endian u32.
    let (body, trailer) = payload.split_at(payload.len() - 4);
    let size = u32::from_le_bytes([trailer[0], trailer[1], trailer[2], trailer[3]]) as usize;
    let format = compression(payload).ok_or_else(|| {
        Error::UnknownCompression(payload[..4].iter().map(|b| format!("{b:02x}")).collect())
    })?;
    if format != "none" && size as u64 > cap {
        return Err(Error::TooLarge {
            size: size as u64,
            cap,
        });
    }
    let corrupt = |why: String| Error::Corrupt { format, why };
    let overflow = || Error::Overflow {
        format,
        size: size as u64,
    };
    // Every decoder may write at most `size + 1` bytes: one more than the trailer proves a bomb.
    let limit = size.saturating_add(1);
    let out = match format {
        "lz4" => lz4_legacy(body, size).map_err(corrupt)?,
        "gzip" => {
            let deflate = gzip_body(body).ok_or_else(|| corrupt("bad gzip header".into()))?;
            match miniz_oxide::inflate::decompress_to_vec_with_limit(deflate, limit) {
                Ok(v) => v,
                Err(e) if e.status == miniz_oxide::inflate::TINFLStatus::HasMoreOutput => {
                    return Err(overflow())
                }
                Err(e) => return Err(corrupt(format!("{:?}", e.status))),
            }
        }
        "zstd" => {
            let d = ruzstd::decoding::StreamingDecoder::new(body)
                .map_err(|e| corrupt(e.to_string()))?;
            let mut v = Vec::with_capacity(size);
            d.take(limit as u64)
                .read_to_end(&mut v)
                .map_err(|e| corrupt(e.to_string()))?;
            v
        }
        "xz" => {
            let mut w = Capped {
                v: Vec::with_capacity(size),
                limit,
            };
            lzma_rs::xz_decompress(&mut std::io::BufReader::new(body), &mut w)
                .map_err(|e| corrupt(e.to_string()))?;
            w.v
        }
        _ => payload.to_vec(),
    };
    if format != "none" && out.len() > size {
        return Err(overflow());
    }
    if format != "none" && out.len() != size {
        return Err(corrupt(format!(
            "decompressed {} bytes, the trailer says {size}",
            out.len()
        )));
    }
    if out.get(..4) != Some(b"\x7fELF") {
        return Err(Error::NotElf);
    }
    Ok(out)
}

/// A writer that refuses to grow past `limit` bytes (keeps the xz decoder bounded).
struct Capped {
    v: Vec<u8>,
    limit: usize,
}

impl std::io::Write for Capped {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let room = self.limit.saturating_sub(self.v.len());
        if room == 0 && !buf.is_empty() {
            return Err(std::io::Error::other("output past the size trailer"));
        }
        let n = buf.len().min(room);
        self.v.extend_from_slice(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The LZ4 "legacy" frame the kernel uses: magic, then blocks of (u32 compressed size,
/// data), each decompressing to at most 8 MiB; a repeated magic starts a new frame.
fn lz4_legacy(mut data: &[u8], size: usize) -> Result<Vec<u8>, String> {
    const MAGIC: u32 = 0x184c_2102;
    let mut out = vec![0u8; size];
    let mut pos = 0usize;
    while data.len() >= 4 {
        let n = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
        data = &data[4..];
        if n == MAGIC {
            continue;
        }
        let n = n as usize;
        let block = data.get(..n).ok_or("block runs past the end")?;
        data = &data[n..];
        let end = pos.saturating_add(8 << 20).min(size);
        pos += lz4_flex::block::decompress_into(block, &mut out[pos..end])
            .map_err(|e| e.to_string())?;
        if pos == size {
            break;
        }
    }
    out.truncate(pos);
    Ok(out)
}

/// The raw deflate stream inside a gzip member (RFC 1952 header skipped).
fn gzip_body(d: &[u8]) -> Option<&[u8]> {
    let flags = *d.get(3)?;
    let mut i = 10;
    if flags & 4 != 0 {
        let xlen = u16::from_le_bytes([*d.get(i)?, *d.get(i + 1)?]) as usize;
        i += 2 + xlen;
    }
    for bit in [8u8, 16] {
        if flags & bit != 0 {
            i += d.get(i..)?.iter().position(|&b| b == 0)? + 1;
        }
    }
    if flags & 2 != 0 {
        i += 2;
    }
    d.get(i..)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_bzimage(payload: &[u8]) -> Vec<u8> {
        let mut img = vec![0u8; 5 * 512];
        img[0x1f1] = 4;
        img[0x202..0x206].copy_from_slice(b"HdrS");
        img[0x248..0x24c].copy_from_slice(&0u32.to_le_bytes());
        img[0x24c..0x250].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        img.extend_from_slice(payload);
        img
    }

    fn elf() -> Vec<u8> {
        let mut v = b"\x7fELF".to_vec();
        v.extend((0..100_000u32).map(|i| (i % 251) as u8));
        v
    }

    #[test]
    fn lz4_legacy_round_trip() {
        let raw = elf();
        let mut payload = 0x184c_2102u32.to_le_bytes().to_vec();
        let block = lz4_flex::block::compress(&raw);
        payload.extend((block.len() as u32).to_le_bytes());
        payload.extend(&block);
        payload.extend((raw.len() as u32).to_le_bytes());
        assert_eq!(
            extract_vmlinux(&fake_bzimage(&payload), 1 << 30).unwrap(),
            raw
        );
    }

    #[test]
    fn bad_payloads_are_errors() {
        assert!(matches!(
            extract_vmlinux(&[0u8; 100], 1 << 30),
            Err(Error::Truncated)
        ));
        let mut p = b"????".to_vec();
        p.extend([0u8; 8]);
        assert!(matches!(
            extract_vmlinux(&fake_bzimage(&p), 1 << 30),
            Err(Error::UnknownCompression(_))
        ));
        let mut p = 0x184c_2102u32.to_le_bytes().to_vec();
        p.extend(50u32.to_le_bytes());
        p.extend([0xffu8; 8]);
        p.extend(1000u32.to_le_bytes());
        assert!(matches!(
            extract_vmlinux(&fake_bzimage(&p), 1 << 30),
            Err(Error::Corrupt { .. })
        ));
    }
}
