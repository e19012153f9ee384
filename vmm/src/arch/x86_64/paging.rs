//! Boot page tables for 64-bit entry: the first 4 GiB identity-mapped with 2 MiB pages
//! (PML4 -> one PDPT -> four page directories), as Firecracker and Cloud Hypervisor map
//! it (they map 1 GiB); Linux replaces them with its own before touching anything else.

use vm_memory::{Bytes, GuestAddress, GuestMemoryError, GuestMemoryMmap};

use super::layout::{PD, PDPT, PML4};

/// Present | writable.
const PRESENT_RW: u64 = 0x3;
/// Present | writable | page size (2 MiB).
const PRESENT_RW_PS: u64 = 0x83;
/// Page directories written (each maps 1 GiB).
pub const IDENTITY_GIB: u64 = 4;

/// Writes the identity tables at [`PML4`], [`PDPT`] and [`PD`]; CR3 = [`PML4`].
pub fn write_identity_tables(mem: &GuestMemoryMmap) -> Result<(), GuestMemoryError> {
    mem.write_obj(PDPT | PRESENT_RW, GuestAddress(PML4))?;
    for d in 0..IDENTITY_GIB {
        let pd = PD + d * 0x1000;
        mem.write_obj(pd | PRESENT_RW, GuestAddress(PDPT + d * 8))?;
        let entries: Vec<u8> = (0..512u64)
            .flat_map(|i| (((d << 30) | (i << 21)) | PRESENT_RW_PS).to_le_bytes())
            .collect();
        mem.write_slice(&entries, GuestAddress(pd))?;
    }
    Ok(())
}
