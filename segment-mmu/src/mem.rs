//! Guest-physical memory as the walker sees it.
//!
//! The walker never touches guest RAM directly: it reads 8-byte entries through
//! [`GuestPhysMemory`]. That seam lets the same walker run over a `.ptsnap` ptsnap, a
//! synthetic address space, a test's hand-made tables, or (in the VMM) live guest memory.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// Size of one page-table page (and of the smallest page).
pub const PAGE_SIZE: u64 = 4096;

/// Errors of guest-physical memory readers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MemError {
    /// Nothing is known at this guest-physical address (outside RAM, or a page the
    /// reader does not hold).
    #[error("guest-physical address {0:#x} is not readable")]
    Unreadable(u64),
    /// The address is not 8-byte aligned.
    #[error("guest-physical address {0:#x} is not 8-byte aligned")]
    Unaligned(u64),
}

/// Read access to guest-physical memory, one 8-byte little-endian word at a time.
///
/// Only aligned reads are needed: page-table entries are 8-byte aligned.
pub trait GuestPhysMemory {
    /// Reads the aligned little-endian `u64` at `gpa`.
    fn read_u64(&self, gpa: u64) -> Result<u64, MemError>;

    /// Reads the whole 4 KiB page at `gpa` (which must be page aligned) into `out`.
    /// The default reads word by word; readers backed by real memory should override it.
    fn read_page(&self, gpa: u64, out: &mut [u64; 512]) -> Result<(), MemError> {
        if gpa % PAGE_SIZE != 0 {
            return Err(MemError::Unaligned(gpa));
        }
        for (i, w) in out.iter_mut().enumerate() {
            *w = self.read_u64(gpa + 8 * i as u64)?;
        }
        Ok(())
    }

    /// Hints that the word at `gpa` will be read soon (a cache prefetch). Reads nothing
    /// and changes nothing observable; the default does nothing.
    #[inline]
    fn prefetch(&self, _gpa: u64) {}
}

impl<T: GuestPhysMemory + ?Sized> GuestPhysMemory for &T {
    fn read_u64(&self, gpa: u64) -> Result<u64, MemError> {
        (**self).read_u64(gpa)
    }
    fn read_page(&self, gpa: u64, out: &mut [u64; 512]) -> Result<(), MemError> {
        (**self).read_page(gpa, out)
    }
    #[inline]
    fn prefetch(&self, gpa: u64) {
        (**self).prefetch(gpa)
    }
}

/// Advises the kernel to back the whole 2 MiB pages inside `buf`'s allocation with
/// transparent huge pages (before anything is written there). Best effort: where THP is
/// off, or off Linux, the memory stays on small pages.
fn advise_huge_pages(buf: &Vec<[u64; 512]>) {
    #[cfg(target_os = "linux")]
    {
        const HUGE: usize = 2 << 20;
        let start = buf.as_ptr() as usize;
        let end = start + buf.capacity() * std::mem::size_of::<[u64; 512]>();
        let (a, b) = (start.next_multiple_of(HUGE), end / HUGE * HUGE);
        if b > a {
            // SAFETY: advice on whole 2 MiB pages inside the allocation `buf` owns, which
            // holds nothing yet; MADV_HUGEPAGE only chooses the page size that will back
            // them, never their contents. A failure (THP disabled) changes nothing.
            unsafe { libc::madvise(a as *mut libc::c_void, b - a, libc::MADV_HUGEPAGE) };
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = buf;
}

/// Asks the CPU to bring the cache line holding `*word` closer (a software prefetch:
/// no architectural effect, never faults). A no-op off x86-64.
#[inline(always)]
pub fn prefetch_word(word: &u64) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        // SAFETY: `_mm_prefetch` needs SSE, which every x86-64 CPU has (it is in the
        // x86-64 baseline this crate is built for); a prefetch reads nothing
        // architecturally and cannot fault, and the pointer comes from a live reference.
        unsafe { _mm_prefetch::<_MM_HINT_T0>((word as *const u64).cast::<i8>()) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = word;
}

/// A cheap hasher for page frame numbers: keys are already well spread integers, and
/// SipHash would dominate the cost of a page walk (several lookups per walk).
#[derive(Debug, Default, Clone, Copy)]
pub struct PfnHasher(u64);

impl Hasher for PfnHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ b as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u64(&mut self, n: u64) {
        // Fibonacci hashing; the high bits are well mixed and hashbrown uses the top 7
        // bits as control bytes and the low bits for the bucket.
        let h = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        self.0 = h ^ (h >> 29);
    }
}

/// `HashMap` keyed by page frame number with [`PfnHasher`].
pub type PfnMap<V> = HashMap<u64, V, BuildHasherDefault<PfnHasher>>;

/// A sparse set of 4 KiB pages: what ptsnaps and synthetic builders hold (only the
/// page-table pages; data pages are never materialised).
#[derive(Debug, Clone, Default)]
pub struct PageStore {
    index: PfnMap<u32>,
    pages: Vec<[u64; 512]>,
    gpas: Vec<u64>,
    /// Optional flat index (`pfn - dense_base` → slot + 1, 0 = absent) built by
    /// [`PageStore::optimize`]: one array load instead of a hash probe on every level of
    /// every walk.
    dense: Vec<u32>,
    dense_base: u64,
}

impl PartialEq for PageStore {
    fn eq(&self, o: &Self) -> bool {
        self.gpas == o.gpas && self.pages == o.pages
    }
}

impl Eq for PageStore {}

/// Largest span of page frames the flat index covers (2^24 frames = 64 GiB of
/// guest-physical space, a 64 MiB index at most).
const DENSE_MAX_SPAN: u64 = 1 << 24;

impl PageStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty store whose pages go into `buf` (emptied first, its capacity kept), with
    /// room for that many pages in its index too. A capture of a paused guest copies into
    /// memory its caller prepared (reserved, on huge pages) instead of growing and
    /// faulting fresh memory in page by page while the guest waits.
    pub fn with_buffer(mut buf: Vec<[u64; 512]>) -> Self {
        buf.clear();
        let n = buf.capacity();
        let mut index = PfnMap::default();
        index.reserve(n);
        PageStore {
            index,
            pages: buf,
            gpas: Vec::with_capacity(n),
            dense: Vec::new(),
            dense_base: 0,
        }
    }

    /// Number of pages held.
    pub fn len(&self) -> usize {
        self.pages.len()
    }

    /// True when no page is held.
    pub fn is_empty(&self) -> bool {
        self.pages.is_empty()
    }

    /// True when the page at `gpa` (page aligned) is held.
    pub fn contains(&self, gpa: u64) -> bool {
        self.index.contains_key(&(gpa / PAGE_SIZE))
    }

    /// Builds the flat index when the pages span at most 64 GiB of guest-physical
    /// space (always true for synthetic spaces and for most guests). Later inserts drop it.
    pub fn optimize(&mut self) {
        self.dense = Vec::new();
        let (Some(&lo), Some(&hi)) = (self.gpas.iter().min(), self.gpas.iter().max()) else {
            return;
        };
        let (lo, hi) = (lo / PAGE_SIZE, hi / PAGE_SIZE);
        if hi - lo >= DENSE_MAX_SPAN {
            return;
        }
        let mut dense = vec![0u32; (hi - lo + 1) as usize];
        for (slot, &gpa) in self.gpas.iter().enumerate() {
            dense[(gpa / PAGE_SIZE - lo) as usize] = slot as u32 + 1;
        }
        self.dense = dense;
        self.dense_base = lo;
        self.move_to_huge_pages();
    }

    /// Copies the pages into memory advised for transparent huge pages when they fill
    /// at least one 2 MiB page. A replay's walks read page-table entries at random over
    /// the whole store (8 MiB of last-level tables per 4 GiB of 4 KiB-mapped heap): on
    /// 4 KiB pages most of those reads also miss the host's TLB, which on a virtualised
    /// host costs a two-dimensional walk of its own. Contents and slots are unchanged.
    fn move_to_huge_pages(&mut self) {
        const HUGE: usize = 2 << 20;
        let bytes = std::mem::size_of_val(self.pages.as_slice());
        if bytes < HUGE {
            return;
        }
        // One huge page of slack so that the aligned part covers every page.
        let mut buf: Vec<[u64; 512]> = Vec::with_capacity(self.pages.len() + HUGE / 4096);
        advise_huge_pages(&buf);
        buf.extend_from_slice(&self.pages);
        self.pages = buf;
    }

    /// Inserts or replaces the page at `gpa` (rounded down to its page).
    pub fn insert(&mut self, gpa: u64, words: [u64; 512]) {
        self.dense = Vec::new();
        let pfn = gpa / PAGE_SIZE;
        match self.index.get(&pfn) {
            Some(&i) => self.pages[i as usize] = words,
            None => {
                self.index.insert(pfn, self.pages.len() as u32);
                self.pages.push(words);
                self.gpas.push(pfn * PAGE_SIZE);
            }
        }
    }

    /// The page at `gpa`, if held.
    #[inline]
    pub fn page(&self, gpa: u64) -> Option<&[u64; 512]> {
        let pfn = gpa / PAGE_SIZE;
        if !self.dense.is_empty() {
            let slot = *self.dense.get(pfn.wrapping_sub(self.dense_base) as usize)?;
            return self.pages.get(slot.checked_sub(1)? as usize);
        }
        self.index.get(&pfn).map(|&i| &self.pages[i as usize])
    }

    /// Mutable access to a held page.
    pub fn page_mut(&mut self, gpa: u64) -> Option<&mut [u64; 512]> {
        let i = *self.index.get(&(gpa / PAGE_SIZE))?;
        Some(&mut self.pages[i as usize])
    }

    /// Pages in insertion order, with their guest-physical addresses.
    pub fn iter(&self) -> impl Iterator<Item = (u64, &[u64; 512])> {
        self.gpas.iter().copied().zip(self.pages.iter())
    }
}

impl GuestPhysMemory for PageStore {
    #[inline]
    fn read_u64(&self, gpa: u64) -> Result<u64, MemError> {
        if gpa % 8 != 0 {
            return Err(MemError::Unaligned(gpa));
        }
        let page = self.page(gpa).ok_or(MemError::Unreadable(gpa))?;
        Ok(page[((gpa % PAGE_SIZE) / 8) as usize])
    }
    fn read_page(&self, gpa: u64, out: &mut [u64; 512]) -> Result<(), MemError> {
        if gpa % PAGE_SIZE != 0 {
            return Err(MemError::Unaligned(gpa));
        }
        *out = *self.page(gpa).ok_or(MemError::Unreadable(gpa))?;
        Ok(())
    }
    #[inline]
    fn prefetch(&self, gpa: u64) {
        if let Some(page) = self.page(gpa) {
            prefetch_word(&page[((gpa % PAGE_SIZE) / 8) as usize]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_reads_back_and_rejects_missing_or_unaligned() {
        let mut s = PageStore::new();
        let mut p = [0u64; 512];
        p[3] = 0xdead;
        s.insert(0x5000, p);
        assert_eq!(s.read_u64(0x5018), Ok(0xdead));
        assert_eq!(s.read_u64(0x6000), Err(MemError::Unreadable(0x6000)));
        assert_eq!(s.read_u64(0x5001), Err(MemError::Unaligned(0x5001)));
        let mut out = [0u64; 512];
        s.read_page(0x5000, &mut out).unwrap();
        assert_eq!(out[3], 0xdead);
        assert_eq!(s.len(), 1);
        s.insert(0x9000, [1; 512]);
        s.optimize();
        let mut b = PageStore::with_buffer(vec![[9; 512]; 3]);
        assert!(b.is_empty());
        b.insert(0x2000, [4; 512]);
        assert_eq!(b.read_u64(0x2008), Ok(4));
        assert_eq!(s.read_u64(0x5018), Ok(0xdead));
        assert_eq!(s.read_u64(0x9000), Ok(1));
        assert_eq!(s.read_u64(0x7000), Err(MemError::Unreadable(0x7000)));
        assert_eq!(s.read_u64(0x1000), Err(MemError::Unreadable(0x1000)));
        assert_eq!(s.read_u64(0xa000), Err(MemError::Unreadable(0xa000)));
        s.prefetch(0x5018); // a hint: no effect on what is read
        s.prefetch(0x7000); // not held: nothing to prefetch, no panic
        assert_eq!(s.read_u64(0x5018), Ok(0xdead));
    }

    #[test]
    fn optimize_onto_huge_pages_keeps_every_page() {
        // 600 pages (more than one 2 MiB page), inserted out of order.
        let mut s = PageStore::new();
        for i in (0..600u64).rev() {
            let mut p = [0u64; 512];
            p[(i % 512) as usize] = i + 1;
            s.insert(0x10_0000 + i * PAGE_SIZE, p);
        }
        let before: Vec<(u64, [u64; 512])> = s.iter().map(|(g, p)| (g, *p)).collect();
        s.optimize();
        let after: Vec<(u64, [u64; 512])> = s.iter().map(|(g, p)| (g, *p)).collect();
        assert_eq!(before, after);
        for i in 0..600u64 {
            let gpa = 0x10_0000 + i * PAGE_SIZE + 8 * (i % 512);
            assert_eq!(s.read_u64(gpa), Ok(i + 1));
        }
    }
}
