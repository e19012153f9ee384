#![no_main]
//! Fuzz target: `segvmm::fuzz_entry::loader` (the body lives in the library so that
//! tests/fuzz_entry.rs runs it on stable too).
libfuzzer_sys::fuzz_target!(|data: &[u8]| segvmm::fuzz_entry::loader(data));
