//! Saving and restoring a transport's state for whole-VM snapshots (issue #15): the
//! registers the driver programmed (status, features, selectors, interrupt status) and
//! each queue's `virtio-queue` state (size, ready, ring addresses, next avail/used
//! indices). Devices serve requests synchronously on the notifying vCPU's thread, so with
//! every vCPU paused no request is in flight and this is the whole transport.

use serde::{Deserialize, Serialize};
use virtio_queue::{Queue, QueueState};

use super::{Error, MmioTransport, State};

/// One queue's state (`virtio_queue::QueueState`, which has no serde).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueSnapshot {
    /// The largest size the device offers.
    pub max_size: u16,
    /// The size the driver chose.
    pub size: u16,
    /// QueueReady.
    pub ready: bool,
    /// Descriptor table, guest-physical.
    pub desc_table: u64,
    /// Available ring, guest-physical.
    pub avail_ring: u64,
    /// Used ring, guest-physical.
    pub used_ring: u64,
    /// The next available-ring entry the device reads.
    pub next_avail: u16,
    /// The next used-ring entry the device writes.
    pub next_used: u16,
    /// VIRTIO_F_RING_EVENT_IDX in use.
    pub event_idx_enabled: bool,
}

impl From<QueueState> for QueueSnapshot {
    fn from(q: QueueState) -> Self {
        QueueSnapshot {
            max_size: q.max_size,
            size: q.size,
            ready: q.ready,
            desc_table: q.desc_table,
            avail_ring: q.avail_ring,
            used_ring: q.used_ring,
            next_avail: q.next_avail,
            next_used: q.next_used,
            event_idx_enabled: q.event_idx_enabled,
        }
    }
}

impl From<&QueueSnapshot> for QueueState {
    fn from(q: &QueueSnapshot) -> Self {
        QueueState {
            max_size: q.max_size,
            next_avail: q.next_avail,
            next_used: q.next_used,
            event_idx_enabled: q.event_idx_enabled,
            size: q.size,
            ready: q.ready,
            desc_table: q.desc_table,
            avail_ring: q.avail_ring,
            used_ring: q.used_ring,
        }
    }
}

/// A transport's saved state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransportSnapshot {
    /// The device ID it fronts (checked on restore).
    pub device_type: u32,
    /// The status register (DEVICE_NEEDS_RESET included).
    pub status: u32,
    /// DeviceFeaturesSel.
    pub device_features_sel: u32,
    /// DriverFeaturesSel.
    pub driver_features_sel: u32,
    /// The features the driver wrote.
    pub driver_features: u64,
    /// QueueSel.
    pub queue_sel: u32,
    /// InterruptStatus (not yet acknowledged).
    pub interrupt_status: u32,
    /// Each queue.
    pub queues: Vec<QueueSnapshot>,
}

impl MmioTransport {
    /// The transport's state (a poisoned lock gives the state of a reset transport).
    pub fn save_state(&self) -> TransportSnapshot {
        match self.state.lock() {
            Ok(st) => snapshot_of(&st),
            Err(p) => snapshot_of(&p.into_inner()),
        }
    }

    /// Loads a saved state into this (new, unused) transport: the device type and every
    /// queue's maximum size must match, and each queue must be one virtio-queue accepts.
    pub fn restore_state(&self, s: &TransportSnapshot) -> Result<(), Error> {
        let mut st = self.state.lock().map_err(|_| self.bad("lock poisoned"))?;
        if s.device_type != st.device.device_type() {
            return Err(self.bad(&format!(
                "saved device type {} is not this device's {}",
                s.device_type,
                st.device.device_type()
            )));
        }
        if s.queues.len() != st.queues.len() {
            return Err(self.bad(&format!(
                "{} saved queues for a device with {}",
                s.queues.len(),
                st.queues.len()
            )));
        }
        let mut queues = Vec::with_capacity(s.queues.len());
        for (i, (q, now)) in s.queues.iter().zip(&st.queues).enumerate() {
            if q.max_size != virtio_queue::QueueT::max_size(now) {
                return Err(self.bad(&format!("queue {i}: saved maximum size {}", q.max_size)));
            }
            let q = Queue::try_from(QueueState::from(q))
                .map_err(|e| self.bad(&format!("queue {i}: {e}")))?;
            queues.push(q);
        }
        st.queues = queues;
        st.status = s.status;
        st.device_features_sel = s.device_features_sel;
        st.driver_features_sel = s.driver_features_sel;
        st.driver_features = s.driver_features;
        st.queue_sel = s.queue_sel;
        st.interrupt_status = s.interrupt_status;
        Ok(())
    }

    fn bad(&self, what: &str) -> Error {
        Error::BadState {
            device: self.name,
            what: what.to_string(),
        }
    }
}

fn snapshot_of(st: &State) -> TransportSnapshot {
    TransportSnapshot {
        device_type: st.device.device_type(),
        status: st.status,
        device_features_sel: st.device_features_sel,
        driver_features_sel: st.driver_features_sel,
        driver_features: st.driver_features,
        queue_sel: st.queue_sel,
        interrupt_status: st.interrupt_status,
        queues: st.queues.iter().map(|q| q.state().into()).collect(),
    }
}
