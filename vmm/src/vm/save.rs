//! Taking a whole-VM snapshot ([`crate::snapshot`]) of a running VM: every vCPU paused,
//! each vCPU thread saves its own state, the VM-wide and device state and guest RAM are
//! written into a new directory inside the snapshot directory, and the vCPUs resume.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::Vm;
use crate::outdir::OutDir;
use crate::snapshot::{self, memfile, DeviceState, MemoryInfo, SnapshotState};
use crate::vstate::vcpu_thread;

/// How long vCPUs get to pause and to save their state.
const SAVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a snapshot was not taken.
#[derive(Debug, thiserror::Error)]
pub enum SaveError {
    /// The vCPUs did not pause or save.
    #[error(transparent)]
    Vcpu(#[from] vcpu_thread::Error),
    /// KVM refused the VM-wide state.
    #[error(transparent)]
    State(#[from] snapshot::Error),
    /// The directory could not be created or written.
    #[error(transparent)]
    OutDir(#[from] crate::outdir::Error),
    /// A diff snapshot without dirty tracking or without a snapshot to diff against.
    #[error("a diff snapshot needs {0}")]
    NoDiff(&'static str),
    /// The dirty log could not be read.
    #[error(transparent)]
    Dirty(#[from] crate::dirty::Error),
    /// virtio devices other than virtio-blk do not save their state yet.
    #[error("this VM has {0} virtio device(s) other than virtio-blk, whose state snapshots do not save yet")]
    VirtioDevices(usize),
}

/// What a snapshot took (the API's answer).
#[derive(Debug, Clone, Serialize)]
pub struct SnapshotTaken {
    /// The directory.
    pub path: String,
    /// vCPUs saved.
    pub vcpus: usize,
    /// Time the guest was paused, ms (pause, save state, write both files, resume).
    pub paused_ms: f64,
    /// Of which: the vCPUs' and VM's state, ms.
    pub state_ms: f64,
    /// Of which: writing the memory and state files (to the page cache), ms.
    pub memory_ms: f64,
    /// The whole request, ms: the pause, then syncing both files to disk and renaming
    /// the directory into place while the guest runs.
    pub total_ms: f64,
    /// Guest RAM bytes.
    pub memory_bytes: u64,
    /// Bytes of RAM data written (the rest are holes).
    pub memory_data_bytes: u64,
    /// Bytes of the state file.
    pub state_bytes: u64,
    /// State KVM would not give on this host.
    pub unsupported: Vec<String>,
}

impl Vm {
    /// Pauses every vCPU, saves the whole VM into a new directory `name` inside `dir`,
    /// and resumes (also on failure) unless the VM was paused through the API. With
    /// `diff`, only the pages dirtied since this VM's previous snapshot are written (dirty
    /// tracking must be on).
    pub(super) fn take_snapshot(
        &mut self,
        dir: &OutDir,
        name: &str,
        diff: bool,
    ) -> Result<SnapshotTaken, SaveError> {
        OutDir::check_name(name)?;
        let unsaved = self.virtio_devices.saturating_sub(self.virtio_blk.len());
        if unsaved > 0 {
            return Err(SaveError::VirtioDevices(unsaved));
        }
        let parent = match (diff, &self.observers.dirty, &self.last_snapshot) {
            (false, _, _) => None,
            (true, None, _) => return Err(SaveError::NoDiff("--track-dirty on the VMM")),
            (true, _, None) => return Err(SaveError::NoDiff("an earlier snapshot of this run")),
            (true, Some(_), Some(p)) => Some(p.clone()),
        };
        let t0 = Instant::now();
        vcpu_thread::pause_all(&self.handles, None, t0 + SAVE_TIMEOUT)?;
        let r = self.save_paused(dir, name, parent, t0);
        if !self.api_paused {
            vcpu_thread::resume_all(&self.handles);
        }
        // A failed snapshot may have drained the dirty log: no diff against anything
        // until the next full snapshot.
        self.last_snapshot = r.is_ok().then(|| name.to_string());
        r.map(|t| SnapshotTaken {
            total_ms: t0.elapsed().as_secs_f64() * 1e3,
            ..t
        })
    }

    fn save_paused(
        &self,
        dir: &OutDir,
        name: &str,
        parent: Option<String>,
        t0: Instant,
    ) -> Result<SnapshotTaken, SaveError> {
        // Notifies the guest signalled through ioeventfds are served before the queues,
        // RAM and interrupt state are saved (the vCPUs are paused: no new ones).
        for t in &self.virtio {
            t.serve_pending_notifies();
        }
        // Every snapshot starts a new diff interval: what the tracker holds is dropped
        // unless this snapshot writes it.
        let pages = match &self.observers.dirty {
            Some((tracker, _)) => tracker.drain()?,
            None => Vec::new(),
        };
        let deadline = Instant::now() + SAVE_TIMEOUT;
        let vcpu = vcpu_thread::save_all(&self.handles, &self.snap.msr_index, deadline)?;
        let vm = snapshot::cpu::save_vm(&self.vm_fd)?;
        let devices = DeviceState {
            serial: self.com1.0.lock().map(|s| s.state()).unwrap_or_default(),
            rtc_index: self.rtc.0.lock().map(|r| r.index()).unwrap_or(0),
            virtio_blk: self.virtio_blk.iter().map(|b| b.save()).collect(),
        };
        let mut unsupported: Vec<String> = Vec::new();
        for (i, v) in vcpu.iter().enumerate() {
            unsupported.extend(v.unsupported.iter().map(|u| format!("vCPU {i}: {u}")));
        }
        let ranges = self.ram.ranges();
        let state = SnapshotState {
            segvmm: env!("CARGO_PKG_VERSION").into(),
            kvm_module: self.snap.kvm_module.clone(),
            payload: self.snap.payload.clone(),
            vcpus: vcpu.len(),
            cpuid: self.snap.cpuid.clone(),
            memory: MemoryInfo {
                size: self.ram.size(),
                ranges: ranges.iter().map(|r| (r.gpa, r.len)).collect(),
                backing: self.ram.backing().to_string(),
                file_len: ranges.last().map_or(0, |r| r.end()),
                data_bytes: 0,
                pages: if parent.is_some() { pages } else { Vec::new() },
                diff_of: parent,
            },
            vcpu,
            vm,
            devices,
            unsupported: unsupported.clone(),
        };
        let state_ms = t0.elapsed().as_secs_f64() * 1e3;
        let (mut data, mut state_bytes) = (0, 0);
        let resumed = std::cell::Cell::new(None);
        // The guest runs again once both files are written; they are synced after, and
        // the directory appears only then.
        let resume = || {
            if !self.api_paused {
                vcpu_thread::resume_all(&self.handles);
            }
            resumed.set(Some(Instant::now()));
        };
        let path = dir.create_dir(name, |p| {
            let w = write_files(p, &self.ram, state, &resume)?;
            (data, state_bytes) = w;
            Ok(())
        })?;
        let paused_ms = resumed.get().unwrap_or_else(Instant::now) - t0;
        Ok(SnapshotTaken {
            path: path.display().to_string(),
            vcpus: self.handles.len(),
            paused_ms: paused_ms.as_secs_f64() * 1e3,
            state_ms,
            memory_ms: paused_ms.as_secs_f64() * 1e3 - state_ms,
            total_ms: 0.0,
            memory_bytes: self.ram.size(),
            memory_data_bytes: data,
            state_bytes,
            unsupported,
        })
    }
}

/// Writes the memory file, then the state file (which records the data written), both
/// created new inside the (temporary) snapshot directory `p`; calls `resume` (the guest
/// may run again: nothing more is read from it), then syncs both files.
fn write_files(
    p: &Path,
    ram: &Arc<crate::memory::GuestRam>,
    mut state: SnapshotState,
    resume: &dyn Fn(),
) -> Result<(u64, u64), crate::outdir::Error> {
    let werr = |path: &Path, e: snapshot::Error| crate::outdir::Error::Write {
        path: path.into(),
        source: std::io::Error::other(e.to_string()),
    };
    let mem_path = p.join(snapshot::MEMORY_FILE);
    let (mem, data) = match state.memory.diff_of {
        Some(_) => memfile::write_pages(ram, &mem_path, &state.memory.pages),
        None => memfile::write(ram, &mem_path),
    }
    .map_err(|e| werr(&mem_path, e))?;
    state.memory.data_bytes = data;
    let state_path = p.join(snapshot::STATE_FILE);
    let bytes = state.encode().map_err(|e| {
        werr(
            &state_path,
            snapshot::Error::Json {
                path: state_path.clone(),
                source: e,
            },
        )
    })?;
    let st = write_new(&state_path, &bytes);
    resume();
    let st = st?;
    let sync = |f: &std::fs::File, path: &Path| {
        f.sync_data().map_err(|source| crate::outdir::Error::Write {
            path: path.into(),
            source,
        })
    };
    sync(&mem, &mem_path)?;
    sync(&st, &state_path)?;
    Ok((data, bytes.len() as u64))
}

/// Creates `path` (O_EXCL|O_NOFOLLOW, 0600) with `bytes`; not synced.
fn write_new(path: &Path, bytes: &[u8]) -> Result<std::fs::File, crate::outdir::Error> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let err = |source| crate::outdir::Error::Write {
        path: path.into(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(err)?;
    f.write_all(bytes).map_err(err)?;
    Ok(f)
}
