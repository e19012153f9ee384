//! VM and vCPU state: creation, registers, CPUID, the run loop, exits and statistics.

/// CPUID set-up lives in [`crate::arch::x86_64::cpuid`]; re-exported for its callers.
pub use crate::arch::x86_64::cpuid;
pub mod emulate;
pub mod stats;
pub mod vcpu;
pub mod vcpu_thread;
pub mod vm;
