//! VM and vCPU state: creation, registers, CPUID, the run loop, exits and statistics.

pub mod cpuid;
pub mod emulate;
pub mod stats;
pub mod vcpu;
pub mod vcpu_thread;
pub mod vm;
