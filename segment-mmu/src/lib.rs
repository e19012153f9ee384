//! segment-mmu: models of memory-management units for virtual machines.
//!
//! Pure Rust, no KVM: builds and tests on any Linux machine.
//!
//! The crate has two halves. The MMU-modelling half replays an address stream through
//! models of today's and proposed MMUs over a guest's page tables:
//!
//! * [`mem`] / [`walker`] / [`enumerate`]: x86-64 4- and 5-level page walks over a
//!   guest-physical memory trait, and a lister of all mappings;
//! * [`census`]: a ptsnap in a kernel's own terms (direct map per page size, table
//!   pages per half and level), to check it against what the guest reports;
//! * [`ptsnap`]: the versioned `.ptsnap` format (see its module docs), capture from a
//!   live guest, and a synthetic builder;
//! * [`tlb`]: set-associative LRU TLBs, page-walk caches and a nested TLB, with presets;
//! * [`host`]: the host side of a VM (gPA→hPA paging and direct segments);
//! * [`designs`]: one type per MMU design behind [`designs::Design`];
//! * [`stream`]: address-stream generators, their spec syntax and a binary trace format;
//! * [`replay`]: feeds one stream to every selected design and returns serde reports.
//!
//! * [`units`] / [`bytes`]: the one size syntax, FNV-1a and a bounds-checked byte reader.
//!
//! The other half, [`placement`], simulates datacenter segment placement.

pub mod placement;
pub mod plot;

pub mod bloom;
pub mod bytes;
pub mod census;
pub mod designs;
pub mod duration;
pub mod enumerate;
pub mod fuzz_entry;
pub mod host;
pub mod hotness;
pub mod layout;
pub mod mem;
pub mod named;
pub mod paging;
pub mod project;
pub mod ptsnap;
pub mod replay;
pub mod stream;
pub mod tlb;
pub mod units;
pub mod walker;
