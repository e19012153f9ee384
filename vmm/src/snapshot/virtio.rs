//! virtio-blk in whole-VM snapshots: each disk's configuration (image path, read-only,
//! serial, EVENT_IDX offered, size) and its transport's state. The image itself is not copied (as in
//! Firecracker): a restore reopens the same file under the same lock rules and refuses
//! one that is missing, locked or of another size before any vCPU runs. Requests are
//! served synchronously on the notifying vCPU's thread, so with every vCPU paused none is
//! in flight, and what the guest wrote is in the image (the host's page cache).

use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::devices::virtio::block::Error as BlockError;
use crate::devices::virtio::mmio::{Error as MmioError, TransportSnapshot};
use crate::devices::virtio::{DiskConfig, MmioTransport};

/// One virtio-blk disk in a state file, in slot order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockSnapshot {
    /// The raw image.
    pub path: PathBuf,
    /// Read-only (shared lock, writes refused).
    pub read_only: bool,
    /// The serial GET_ID answers.
    pub id: Option<String>,
    /// VIRTIO_RING_F_EVENT_IDX offered (`event_idx=`; absent in older state files, which
    /// never offered it: off). The queues' own flag is in `transport`.
    #[serde(default)]
    pub event_idx: bool,
    /// Capacity in 512-byte sectors when saved: the reopened image must have it.
    pub sectors: u64,
    /// Its virtio-mmio transport.
    pub transport: TransportSnapshot,
}

impl BlockSnapshot {
    /// The `--disk` that reopens it.
    pub fn disk_config(&self) -> DiskConfig {
        DiskConfig {
            path: self.path.clone(),
            read_only: self.read_only,
            id: self.id.clone(),
            event_idx: self.event_idx,
        }
    }
}

/// A virtio-blk disk of a running VM: what reopens it and its transport.
#[derive(Debug, Clone)]
pub(crate) struct BlockSlot {
    /// How it was opened.
    pub cfg: DiskConfig,
    /// Capacity in sectors.
    pub sectors: u64,
    /// Its transport on the MMIO bus.
    pub transport: Arc<MmioTransport>,
}

impl BlockSlot {
    /// Its state, for a snapshot (every vCPU paused).
    pub(crate) fn save(&self) -> BlockSnapshot {
        BlockSnapshot {
            path: self.cfg.path.clone(),
            read_only: self.cfg.read_only,
            id: self.cfg.id.clone(),
            event_idx: self.cfg.event_idx,
            sectors: self.sectors,
            transport: self.transport.save_state(),
        }
    }
}

/// Why saved virtio state does not fit the devices a restore built.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The image has another size than when the snapshot was taken.
    #[error("--disk {}: the image has {now} sectors, the snapshot was taken with {saved}", path.display())]
    Resized {
        /// The image.
        path: PathBuf,
        /// Sectors when saved.
        saved: u64,
        /// Sectors now.
        now: u64,
    },
    /// Another number of disks than saved.
    #[error("the snapshot has {saved} virtio-blk disk(s), {now} were opened")]
    Count {
        /// Disks saved.
        saved: usize,
        /// Disks opened.
        now: usize,
    },
    /// A transport refused its saved state.
    #[error(transparent)]
    Transport(#[from] MmioError),
    /// Reopening an image.
    #[error(transparent)]
    Block(#[from] BlockError),
}

/// Loads each saved disk's transport state into the slot built for it, after checking
/// that the images kept their size.
pub(crate) fn restore_blocks(
    saved: &[BlockSnapshot],
    slots: &[BlockSlot],
) -> Result<(), RestoreError> {
    if saved.len() != slots.len() {
        return Err(RestoreError::Count {
            saved: saved.len(),
            now: slots.len(),
        });
    }
    for (s, slot) in saved.iter().zip(slots) {
        if s.sectors != slot.sectors {
            return Err(RestoreError::Resized {
                path: s.path.clone(),
                saved: s.sectors,
                now: slot.sectors,
            });
        }
    }
    for (s, slot) in saved.iter().zip(slots) {
        slot.transport.restore_state(&s.transport)?;
    }
    Ok(())
}
