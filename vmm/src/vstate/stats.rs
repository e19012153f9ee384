//! KVM binary statistics (`KVM_GET_STATS_FD`, Linux 5.14+): the VM's and each vCPU's own
//! counters (exits, emulated instructions, shadow-MMU page faults, halts...). These explain
//! what a guest cost the host; debugfs per-vCPU files are not readable on every host, the
//! binary stats file descriptor is.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::FileExt;

/// `_IO(KVMIO, 0xce)`.
const KVM_GET_STATS_FD: libc::c_ulong = 0xAECE;

/// Errors reading statistics.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The ioctl failed (old kernel or no KVM_CAP_BINARY_STATS_FD).
    #[error("KVM_GET_STATS_FD failed: {0}")]
    Ioctl(#[source] std::io::Error),
    /// The stats file is malformed.
    #[error("reading KVM stats: {0}")]
    Read(String),
}

#[derive(Debug, Clone)]
struct Desc {
    name: String,
    offset: u64,
    size: u16,
}

/// One open statistics file (for the VM or one vCPU) with its descriptors read once.
#[derive(Debug)]
pub struct StatsFd {
    file: File,
    data_offset: u64,
    descs: Vec<Desc>,
}

fn u32_at(b: &[u8], off: usize) -> Result<u32, Error> {
    b.get(off..off + 4)
        .map(|s| u32::from_le_bytes(s.try_into().unwrap_or_default()))
        .ok_or_else(|| Error::Read("short header".into()))
}

impl StatsFd {
    /// Opens the statistics of the VM or vCPU behind `fd`.
    pub fn open(fd: &impl AsRawFd) -> Result<Self, Error> {
        // SAFETY: KVM_GET_STATS_FD takes no argument and returns a new file descriptor (or
        // -1); `fd` is a live KVM VM or vCPU descriptor.
        let r = unsafe { libc::ioctl(fd.as_raw_fd(), KVM_GET_STATS_FD as _) };
        if r < 0 {
            return Err(Error::Ioctl(std::io::Error::last_os_error()));
        }
        // SAFETY: `r` is a fresh descriptor we own from here on.
        let file = unsafe { File::from_raw_fd(r) };
        let mut hdr = [0u8; 24];
        file.read_exact_at(&mut hdr, 0)
            .map_err(|e| Error::Read(e.to_string()))?;
        let name_size = u32_at(&hdr, 4)? as usize;
        let num_desc = u32_at(&hdr, 8)? as usize;
        let desc_offset = u32_at(&hdr, 16)? as u64;
        let data_offset = u32_at(&hdr, 20)? as u64;
        if num_desc > 10_000 || name_size > 4096 {
            return Err(Error::Read(format!(
                "implausible header: {num_desc} descriptors, names of {name_size} bytes"
            )));
        }
        let desc_size = 16 + name_size;
        let mut raw = vec![0u8; desc_size * num_desc];
        file.read_exact_at(&mut raw, desc_offset)
            .map_err(|e| Error::Read(e.to_string()))?;
        let descs = raw
            .chunks_exact(desc_size)
            .map(|d| {
                let size = u16::from_le_bytes([d[6], d[7]]);
                let offset = u32::from_le_bytes([d[8], d[9], d[10], d[11]]) as u64;
                let name_bytes = &d[16..];
                let end = name_bytes
                    .iter()
                    .position(|&c| c == 0)
                    .unwrap_or(name_bytes.len());
                Desc {
                    name: String::from_utf8_lossy(&name_bytes[..end]).into_owned(),
                    offset,
                    size,
                }
            })
            .collect();
        Ok(StatsFd {
            file,
            data_offset,
            descs,
        })
    }

    /// Reads every counter now. Histograms are summed into one value.
    pub fn read(&self) -> Result<BTreeMap<String, u64>, Error> {
        let mut out = BTreeMap::new();
        for d in &self.descs {
            let mut buf = vec![0u8; d.size as usize * 8];
            self.file
                .read_exact_at(&mut buf, self.data_offset + d.offset)
                .map_err(|e| Error::Read(format!("{}: {e}", d.name)))?;
            let v = buf
                .chunks_exact(8)
                .map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default()))
                .fold(0u64, u64::wrapping_add);
            out.insert(d.name.clone(), v);
        }
        Ok(out)
    }
}

/// Counters of the VM and of each vCPU, as read at one moment.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct KvmStats {
    /// VM-wide counters.
    pub vm: BTreeMap<String, u64>,
    /// Per-vCPU counters, index = vCPU id.
    pub vcpus: Vec<BTreeMap<String, u64>>,
    /// Sum over vCPUs.
    pub vcpu_total: BTreeMap<String, u64>,
}

impl KvmStats {
    /// Builds the totals.
    pub fn new(vm: BTreeMap<String, u64>, vcpus: Vec<BTreeMap<String, u64>>) -> Self {
        let mut vcpu_total: BTreeMap<String, u64> = BTreeMap::new();
        for c in &vcpus {
            for (k, v) in c {
                *vcpu_total.entry(k.clone()).or_default() += v;
            }
        }
        KvmStats {
            vm,
            vcpus,
            vcpu_total,
        }
    }

    /// A counter summed over vCPUs, else from the VM, else 0.
    pub fn get(&self, name: &str) -> u64 {
        self.vcpu_total
            .get(name)
            .or_else(|| self.vm.get(name))
            .copied()
            .unwrap_or(0)
    }

    /// Counter-wise difference `self - before` (for measuring one interval).
    pub fn delta(&self, before: &KvmStats) -> KvmStats {
        let sub = |a: &BTreeMap<String, u64>, b: &BTreeMap<String, u64>| -> BTreeMap<String, u64> {
            a.iter()
                .map(|(k, v)| (k.clone(), v.wrapping_sub(b.get(k).copied().unwrap_or(0))))
                .collect()
        };
        let vcpus = self
            .vcpus
            .iter()
            .enumerate()
            .map(|(i, c)| {
                before
                    .vcpus
                    .get(i)
                    .map(|b| sub(c, b))
                    .unwrap_or_else(|| c.clone())
            })
            .collect();
        KvmStats::new(sub(&self.vm, &before.vm), vcpus)
    }

    /// The short summary printed at exit.
    pub fn summary(&self) -> String {
        let g = |n: &str| self.get(n);
        format!(
            "kvm: exits {} (io {}, mmio {}, halt {}, irq-window {}, signal {}), insn emulated {}, page faults taken {} fixed {} (guest-injected {}), shadow mmu: pte writes {}, unsync {}, cache misses {}, pages 4k/2m/1g {}/{}/{}",
            g("exits"),
            g("io_exits"),
            g("mmio_exits"),
            g("halt_exits"),
            g("irq_window_exits"),
            g("signal_exits"),
            g("insn_emulation"),
            g("pf_taken"),
            g("pf_fixed"),
            g("pf_guest"),
            g("mmu_pte_write"),
            g("mmu_unsync"),
            g("mmu_cache_miss"),
            g("pages_4k"),
            g("pages_2m"),
            g("pages_1g"),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delta_and_totals() {
        let m = |p: &[(&str, u64)]| {
            p.iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect::<BTreeMap<_, _>>()
        };
        let a = KvmStats::new(
            m(&[("pages_4k", 5)]),
            vec![m(&[("exits", 10)]), m(&[("exits", 5)])],
        );
        let b = KvmStats::new(
            m(&[("pages_4k", 2)]),
            vec![m(&[("exits", 3)]), m(&[("exits", 1)])],
        );
        assert_eq!(a.get("exits"), 15);
        let d = a.delta(&b);
        assert_eq!(d.get("exits"), 11);
        assert_eq!(d.get("pages_4k"), 3);
        assert!(a.summary().contains("exits 15"));
    }
}
