//! Fuzzes the `.ptsnap` reader: any input is either rejected with a typed error or
//! yields a ptsnap whose tables enumerate and walk without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use segment_mmu::ptsnap::Ptsnap;
use segment_mmu::walker::{walk, Access};

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = Ptsnap::from_bytes(data) {
        let cfg = s.walk_config();
        for (i, sp) in s.spaces.iter().enumerate() {
            let _ = s.mappings(i);
            for va in [
                0u64,
                0x1000,
                0x7fff_ffff_f000,
                0xffff_8000_0000_0000,
                0x1000_0000_0000,
            ] {
                let _ = walk(&s, &cfg, sp.cr3, va, Access::default());
            }
        }
        // What was accepted must round-trip.
        assert_eq!(Ptsnap::from_bytes(&s.to_bytes()).as_ref(), Ok(&s));
    }
});
