//! What is specific to the guest's instruction set: descriptor tables, boot page tables,
//! initial registers, CPUID, boot MSRs, local APIC set-up, and the MP and ACPI tables.
//! Only x86-64 exists today; docs/vmm.md compares the state set here with Firecracker's
//! and Cloud Hypervisor's.

pub mod x86_64;
