//! segvmm: a rust-vmm-style KVM virtual machine monitor whose guest RAM is one host
//! mapping, plus the glue that feeds live guests into the `segment-mmu` models.

pub mod api;
pub mod arch;
pub mod boot;
pub mod cli;
pub mod devices;
pub mod dirty;
pub mod fuzz_entry;
pub mod host;
pub mod jail;
pub mod memory;
pub mod outdir;
pub mod probe;
pub mod profile;
pub mod ptsnap;
pub mod seccomp;
pub mod snapshot;
pub mod vm;
pub mod vstate;
