#![no_main]
//! Fuzz target: `segment_mmu::fuzz_entry::hotness` (the body lives in the library so that
//! tests/fuzz_entry.rs runs it on stable too).
libfuzzer_sys::fuzz_target!(|data: &[u8]| segment_mmu::fuzz_entry::hotness(data));
