//! segvmm: a rust-vmm-style KVM virtual machine monitor whose guest RAM is one host
//! mapping, plus the glue that feeds live guests into the `segment-mmu` models.

pub mod cli;
pub mod host;
pub mod memory;
pub mod snapshot;
pub mod vstate;
pub mod api;
pub mod boot;
pub mod devices;
pub mod dirty;
pub mod machine;
pub mod probe;
