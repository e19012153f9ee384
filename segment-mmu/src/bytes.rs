//! Bytes helpers shared by every binary format in the workspace: the FNV-1a 64 checksum and
//! a bounds-checked little-endian reader.
//!
//! `.ptsnap` files, hotness logs and the VMM's result files all use these two, so a fix to
//! either (a bound, an overflow) reaches every reader at once.

/// FNV-1a 64: tiny, dependency free, and enough to catch truncation and bit rot.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// A read past the end, or a malformed variable-length integer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The input ends before the field.
    #[error("truncated at byte {offset} reading {what}: {needed} more bytes needed")]
    Truncated {
        /// The field being read.
        what: &'static str,
        /// Where the field starts.
        offset: usize,
        /// How many bytes are missing.
        needed: usize,
    },
    /// A LEB128 varint longer than 10 bytes or above `u64::MAX`.
    #[error("{what} at byte {offset}: varint overflows 64 bits")]
    Varint {
        /// The field being read.
        what: &'static str,
        /// Where the varint starts.
        offset: usize,
    },
}

/// A cursor over a byte slice; every read is bounds-checked and names its field.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    /// A reader starting at byte `at` of `b` (clamped to its length).
    pub fn new(b: &'a [u8], at: usize) -> Self {
        Self {
            b,
            at: at.min(b.len()),
        }
    }
    /// Bytes not read yet.
    pub fn left(&self) -> usize {
        self.b.len() - self.at
    }
    /// The offset of the next byte.
    pub fn offset(&self) -> usize {
        self.at
    }
    /// The next `n` bytes.
    pub fn bytes(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], Error> {
        if self.left() < n {
            return Err(Error::Truncated {
                what,
                offset: self.at,
                needed: n - self.left(),
            });
        }
        let s = &self.b[self.at..self.at + n];
        self.at += n;
        Ok(s)
    }
    /// The next `N` bytes as an array.
    pub fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], Error> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.bytes(N, what)?);
        Ok(a)
    }
    /// One byte.
    pub fn u8(&mut self, what: &'static str) -> Result<u8, Error> {
        Ok(self.array::<1>(what)?[0])
    }
    /// A little-endian `u16`.
    pub fn u16(&mut self, what: &'static str) -> Result<u16, Error> {
        Ok(u16::from_le_bytes(self.array(what)?))
    }
    /// A little-endian `u32`.
    pub fn u32(&mut self, what: &'static str) -> Result<u32, Error> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }
    /// A little-endian `u64`.
    pub fn u64(&mut self, what: &'static str) -> Result<u64, Error> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }
    /// A little-endian `f32`.
    pub fn f32(&mut self, what: &'static str) -> Result<f32, Error> {
        Ok(f32::from_le_bytes(self.array(what)?))
    }
    /// An unsigned LEB128 varint of at most 10 bytes.
    pub fn varint(&mut self, what: &'static str) -> Result<u64, Error> {
        let offset = self.at;
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.u8(what)?;
            let bits = u64::from(byte & 0x7f);
            if shift == 63 && bits > 1 {
                return Err(Error::Varint { what, offset });
            }
            v |= bits << shift;
            if byte & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(Error::Varint { what, offset })
    }
}

/// Appends `v` as an unsigned LEB128 varint.
pub fn put_varint(b: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        b.push((v as u8) | 0x80);
        v >>= 7;
    }
    b.push(v as u8);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_known_values() {
        // Published FNV-1a 64 test vectors.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn reader_bounds_and_varints() {
        let mut b = vec![1u8, 2, 0, 3, 0, 0, 0];
        for v in [0, 1, 127, 128, 300, u64::MAX] {
            put_varint(&mut b, v);
        }
        let mut r = Reader::new(&b, 0);
        assert_eq!(r.u8("a"), Ok(1));
        assert_eq!(r.u16("b"), Ok(2));
        assert_eq!(r.u32("c"), Ok(3));
        for v in [0, 1, 127, 128, 300, u64::MAX] {
            assert_eq!(r.varint("v"), Ok(v));
        }
        assert_eq!(r.left(), 0);
        assert_eq!(
            r.u32("tail"),
            Err(Error::Truncated {
                what: "tail",
                offset: b.len(),
                needed: 4
            })
        );
        let long = [0xffu8; 11];
        assert!(matches!(
            Reader::new(&long, 0).varint("x"),
            Err(Error::Varint { .. })
        ));
        let over = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02];
        assert!(matches!(
            Reader::new(&over, 0).varint("x"),
            Err(Error::Varint { .. })
        ));
    }
}
