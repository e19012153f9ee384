//! Running the measurement guest: the plan (address layout, page tables, descriptor tables,
//! parameters), loading it into guest RAM with vCPU 0 starting in 64-bit ring 3 on the
//! workload, and turning what the guest reported into a [`Measurement`].

use std::sync::Arc;
use std::time::Duration;

use kvm_bindings::{kvm_dtable, kvm_regs, kvm_sregs};
use vm_memory::{Bytes, GuestAddress};
use workloads::kernels::Workload;
use workloads::protocol::*;

use super::device::{Outcome, ProbeDevice, PtsnapHook};
use super::image::{self, Image, PROBE_ELF};
use super::layout::{self, Layout, Mapping, PageSize, PageTables};
use super::{Measurement, WorkloadSpec};
use crate::api::ApiConfig;
use crate::arch::x86_64::gdt;
use crate::devices::SIGNAL_MMIO_BASE;
use crate::host::{self, MmuRequest};
use crate::memory::{Backing, GuestRam, MemoryConfig, Prefault, MMIO_HOLE_END, MMIO_HOLE_START};
use crate::vm::{self, Payload, RunReport, VmBuilder, VmConfig};
use crate::vstate::vcpu::VcpuInit;

/// Largest footprint accepted (guest RAM is footprint plus a few MiB).
pub const MAX_FOOTPRINT: u64 = 64 << 30;

/// GDT selectors (Linux's order, so that user code/data would also suit `sysret`).
const KERNEL_CS: u16 = 0x08;
const USER_DS: u16 = 0x20 | 3;
const USER_CS: u16 = 0x28 | 3;
const TSS_SEL: u16 = 0x30;
/// Bytes of the 64-bit TSS.
const TSS_BYTES: u64 = 104;

/// Errors planning or running the guest.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request makes no sense.
    #[error("{0}")]
    BadSpec(String),
    /// The host cannot give it (e.g. 1 GiB guest pages without pdpe1gb).
    #[error("unavailable on this host: {0}")]
    Unavailable(String),
    /// The layout is inconsistent.
    #[error(transparent)]
    Layout(#[from] layout::Error),
    /// The embedded image is broken.
    #[error(transparent)]
    Image(#[from] image::Error),
    /// Writing guest memory.
    #[error("loading the measurement guest: {0}")]
    Load(String),
    /// Host facts.
    #[error(transparent)]
    Host(#[from] host::Error),
    /// Building or running the VM.
    #[error(transparent)]
    Machine(#[from] vm::Error),
}

/// One guest run: the workload and the guest page size of its buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestSpec {
    /// Workload, footprint, seed, count.
    pub work: WorkloadSpec,
    /// Guest page size mapping the buffer.
    pub guest_pages: PageSize,
}

/// How to run it.
#[derive(Clone)]
pub struct GuestOptions {
    /// Host backing of guest RAM.
    pub backing: Backing,
    /// Grow the hugetlb pool when too small (root).
    pub grow_pool: bool,
    /// Give up after this long.
    pub timeout: Duration,
    /// Called at the guest's ptsnap signal.
    pub ptsnap: Option<PtsnapHook>,
    /// Dirty-page tracking (issue #8).
    pub track_dirty: Option<crate::dirty::DirtyConfig>,
}

impl Default for GuestOptions {
    /// THP backing, no pool growth, 10 minutes, no hooks.
    fn default() -> Self {
        GuestOptions {
            backing: Backing::Thp,
            grow_pool: false,
            timeout: Duration::from_secs(600),
            ptsnap: None,
            track_dirty: None,
        }
    }
}

impl std::fmt::Debug for GuestOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestOptions")
            .field("backing", &self.backing)
            .field("grow_pool", &self.grow_pool)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// Everything the VMM puts in guest RAM, computed before the VM exists.
#[derive(Debug, Clone)]
pub struct GuestPlan {
    /// The run.
    pub spec: GuestSpec,
    /// Address layout (public: a page-table capture is compared with it).
    pub layout: Layout,
    /// The tables built from it.
    pub tables: PageTables,
    /// Bytes of guest RAM needed.
    pub ram_size: u64,
    /// Guest-physical address of the buffer's first byte.
    pub data_gpa: u64,
    /// Supervisor virtual address of the buffer's first leaf entry.
    pub entries_va: u64,
    /// Guest entry point.
    pub entry: u64,
}

const fn align_up(x: u64, a: u64) -> u64 {
    x.div_ceil(a) * a
}

fn mapping(
    name: &str,
    va: u64,
    gpa: u64,
    len: u64,
    page: PageSize,
    user: bool,
    writable: bool,
) -> Mapping {
    Mapping {
        name: name.into(),
        va,
        gpa,
        len,
        page,
        user,
        writable,
        uncached: false,
        present: true,
    }
}

/// The buffer must be a non-zero multiple of the guest page size, at most
/// [`MAX_FOOTPRINT`].
fn check_footprint(spec: &GuestSpec) -> Result<(), Error> {
    let footprint = spec.work.footprint;
    let page = spec.guest_pages.bytes();
    if footprint == 0 || footprint % page != 0 {
        return Err(Error::BadSpec(format!(
            "footprint {footprint} bytes: must be a non-zero multiple of the guest page size ({})",
            spec.guest_pages
        )));
    }
    if footprint > MAX_FOOTPRINT {
        return Err(Error::BadSpec(format!(
            "footprint {} MiB: at most {} GiB",
            footprint >> 20,
            MAX_FOOTPRINT >> 30
        )));
    }
    Ok(())
}

/// The mappings every plan has: descriptor tables, params and results pages, stacks, the
/// image (up to `image_end`) and the signal MMIO page.
fn fixed_mappings(image_end: u64) -> Vec<Mapping> {
    let mut mmio = mapping(
        "signal-mmio",
        MMIO_VA,
        SIGNAL_MMIO_BASE,
        4096,
        PageSize::Size4K,
        true,
        true,
    );
    mmio.uncached = true;
    vec![
        mapping(
            "gdt-tss-idt",
            GDT_VA,
            GDT_VA,
            PARAMS_VA - GDT_VA,
            PageSize::Size4K,
            false,
            true,
        ),
        mapping(
            "params",
            PARAMS_VA,
            PARAMS_VA,
            4096,
            PageSize::Size4K,
            true,
            false,
        ),
        mapping(
            "results",
            RESULTS_VA,
            RESULTS_VA,
            4096,
            PageSize::Size4K,
            true,
            true,
        ),
        mapping(
            "ring0-stack",
            KSTACK_BOTTOM,
            KSTACK_BOTTOM,
            KSTACK_TOP - KSTACK_BOTTOM,
            PageSize::Size4K,
            false,
            true,
        ),
        mapping(
            "user-stack",
            USTACK_BOTTOM,
            USTACK_BOTTOM,
            USTACK_TOP - USTACK_BOTTOM,
            PageSize::Size4K,
            true,
            true,
        ),
        mapping(
            "image",
            IMAGE_BASE,
            IMAGE_BASE,
            image_end - IMAGE_BASE,
            PageSize::Size4K,
            true,
            true,
        ),
        mmio,
    ]
}

/// The identity-mapped page-table region of `len` bytes.
fn table_region(len: u64) -> Mapping {
    mapping(
        "page-tables",
        PAGE_TABLES_GPA,
        PAGE_TABLES_GPA,
        len,
        PageSize::Size4K,
        false,
        true,
    )
}

/// Bytes of page tables for `base` plus the buffer plus the table region itself. The
/// count depends only on virtual coverage, so it is sized before the buffer is placed;
/// the region maps itself, hence the loop.
fn table_region_len(base: &[Mapping], spec: &GuestSpec) -> u64 {
    let data_probe = mapping(
        "data",
        DATA_VA,
        0,
        spec.work.footprint,
        spec.guest_pages,
        true,
        true,
    );
    let mut pt_len = 4096;
    loop {
        let mut l = Layout {
            mappings: base.to_vec(),
        };
        l.mappings.push(data_probe.clone());
        l.mappings.push(table_region(pt_len));
        let need = l.table_bytes();
        if need <= pt_len {
            return pt_len;
        }
        pt_len = need;
    }
}

/// Maps the buffer at [`DATA_VA`] from `data_gpa`, split around the MMIO hole where it
/// reaches it (virtually contiguous, physically in two pieces); ptchurn's is mapped not
/// present. Returns the end of guest-physical RAM.
fn push_data(base: &mut Vec<Mapping>, spec: &GuestSpec, data_gpa: u64) -> u64 {
    let footprint = spec.work.footprint;
    let present = spec.work.workload != Workload::PtChurn;
    let mut data = |name: &str, va, gpa, len| {
        let mut m = mapping(name, va, gpa, len, spec.guest_pages, true, true);
        m.present = present;
        base.push(m);
    };
    if data_gpa + footprint <= MMIO_HOLE_START {
        data(
            if present {
                "data"
            } else {
                "data (unmapped: ptchurn)"
            },
            DATA_VA,
            data_gpa,
            footprint,
        );
        data_gpa + footprint
    } else {
        let lo = MMIO_HOLE_START.saturating_sub(data_gpa);
        if lo > 0 {
            data("data-below-4g", DATA_VA, data_gpa, lo);
        }
        data("data-above-4g", DATA_VA + lo, MMIO_HOLE_END, footprint - lo);
        MMIO_HOLE_END + footprint - lo
    }
}

impl GuestPlan {
    /// Plans a run of the embedded guest.
    pub fn new(spec: GuestSpec) -> Result<Self, Error> {
        Self::with_image(spec, &Image::parse(PROBE_ELF)?)
    }

    /// Plans a run of `img`.
    pub fn with_image(spec: GuestSpec, img: &Image) -> Result<Self, Error> {
        let footprint = spec.work.footprint;
        let page = spec.guest_pages.bytes();
        check_footprint(&spec)?;
        let mut base = fixed_mappings(align_up(img.end(), 4096));
        let pt_len = table_region_len(&base, &spec);
        base.push(table_region(pt_len));
        let data_gpa = align_up(PAGE_TABLES_GPA + pt_len, page.max(2 << 20));
        let ram_end = push_data(&mut base, &spec, data_gpa);
        let layout = Layout { mappings: base };
        let tables = layout.build(PAGE_TABLES_GPA, pt_len)?;
        let pages = footprint / page;
        let first = tables.leaf_entry(DATA_VA).map(|e| e.0);
        let last = tables.leaf_entry(DATA_VA + footprint - page).map(|e| e.0);
        let entries_va = match (first, last) {
            (Some(f), Some(l)) if l == f + 8 * (pages - 1) => f,
            _ => {
                return Err(Error::Load(
                    "the buffer's leaf entries are not contiguous".into(),
                ))
            }
        };
        // RAM below the hole ends at a 2 MiB boundary so every backing fits.
        let ram_size = if ram_end > MMIO_HOLE_START {
            ram_end - (MMIO_HOLE_END - MMIO_HOLE_START)
        } else {
            ram_end
        };
        let ram_size = align_up(ram_size, 2 << 20);
        Ok(GuestPlan {
            spec,
            layout,
            tables,
            ram_size,
            data_gpa,
            entries_va,
            entry: img.entry,
        })
    }

    /// The params page.
    pub fn params(&self) -> Vec<(usize, u64)> {
        vec![
            (PARAM_MAGIC, PARAMS_MAGIC),
            (PARAM_WORKLOAD, self.spec.work.workload.code()),
            (PARAM_DATA_VA, DATA_VA),
            (PARAM_DATA_BYTES, self.spec.work.footprint),
            (PARAM_SEED, self.spec.work.seed),
            (PARAM_COUNT, self.spec.work.count()),
            (PARAM_PAGE_BYTES, self.spec.guest_pages.bytes()),
            (PARAM_ENTRIES_VA, self.entries_va),
        ]
    }

    /// Writes image, tables, descriptor tables and params into `ram`; returns vCPU 0's
    /// state: 64-bit ring 3 at the entry point.
    pub fn load(&self, ram: &GuestRam, img: &Image) -> Result<VcpuInit, Error> {
        let mem = ram.memory();
        let put = |gpa: u64, bytes: &[u8]| {
            mem.write_slice(bytes, GuestAddress(gpa))
                .map_err(|e| Error::Load(format!("at {gpa:#x}: {e}")))
        };
        for s in &img.segments {
            put(s.paddr, img.data(s))?;
            put(
                s.paddr + s.filesz as u64,
                &vec![0u8; (s.memsz - s.filesz as u64) as usize],
            )?;
        }
        for t in &self.tables.tables {
            put(t.gpa, &words_to_bytes(&t.entries[..]))?;
        }
        put(GDT_VA, &words_to_bytes(&gdt()))?;
        put(TSS_VA, &tss())?;
        put(IDT_VA, &words_to_bytes(&idt()))?;
        let mut params = [0u64; 512];
        for (i, v) in self.params() {
            params[i] = v;
        }
        put(PARAMS_VA, &words_to_bytes(&params))?;
        Ok(vcpu_init(self.tables.cr3, self.entry))
    }
}

fn words_to_bytes(words: &[u64]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

/// The GDT: null, kernel code/data, user code32/data/code64, then the TSS descriptor.
pub fn gdt() -> [u64; 8] {
    let (lo, hi) = gdt::tss_descriptor(TSS_VA, (TSS_BYTES - 1) as u32);
    let flat = |flags| gdt::entry(flags, 0, 0xfffff);
    [
        0,
        flat(gdt::CODE64_KERNEL),
        flat(gdt::DATA_KERNEL),
        flat(gdt::CODE32_USER),
        flat(gdt::DATA_USER),
        flat(gdt::CODE64_USER),
        lo,
        hi,
    ]
}

/// The 64-bit TSS: RSP0 = top of the ring-0 stack, no I/O bitmap.
pub fn tss() -> Vec<u8> {
    let mut t = vec![0u8; TSS_BYTES as usize];
    t[4..12].copy_from_slice(&KSTACK_TOP.to_le_bytes());
    t[102..104].copy_from_slice(&(TSS_BYTES as u16).to_le_bytes());
    t
}

/// The IDT: interrupt gates (DPL 0) for the 32 exception vectors, pointing at the stubs
/// at the start of the image; the rest not present.
pub fn idt() -> Vec<u64> {
    let mut idt = vec![0u64; 512];
    for v in 0..VECTORS {
        let off = IMAGE_BASE + VECTOR_STUB_BYTES * v;
        idt[2 * v as usize] = (off & 0xffff)
            | (u64::from(KERNEL_CS) << 16)
            | (0xe << 40)
            | (1 << 47)
            | (((off >> 16) & 0xffff) << 48);
        idt[2 * v as usize + 1] = off >> 32;
    }
    idt
}

/// vCPU 0's state: long mode, paging on CR3, SSE enabled, CS/SS at ring 3, TR on the TSS,
/// interrupts off (nothing in this guest wants them).
pub fn vcpu_init(cr3: u64, entry: u64) -> VcpuInit {
    let table = gdt();
    let data = gdt::segment_of(&table, USER_DS);
    let tr = gdt::segment_of(&table, TSS_SEL);
    // No LDT: unusable (type 2 = LDT, as KVM reports an unused one).
    let mut ldt = gdt::segment(0, 0);
    ldt.type_ = 2;
    let sregs = kvm_sregs {
        cs: gdt::segment_of(&table, USER_CS),
        ds: data,
        es: data,
        fs: data,
        gs: data,
        ss: data,
        tr,
        ldt,
        gdt: kvm_dtable {
            base: GDT_VA,
            limit: 8 * 8 - 1,
            ..Default::default()
        },
        idt: kvm_dtable {
            base: IDT_VA,
            limit: 256 * 16 - 1,
            ..Default::default()
        },
        cr0: 0x8001_0033, // PG | WP | NE | ET | MP | PE
        cr3,
        cr4: (1 << 5) | (1 << 9) | (1 << 10), // PAE | OSFXSR | OSXMMEXCPT
        efer: (1 << 8) | (1 << 10),           // LME | LMA
        apic_base: 0xfee0_0900,
        ..Default::default()
    };
    let regs = kvm_regs {
        rip: entry,
        rsp: USTACK_TOP,
        rflags: 0x2,
        ..Default::default()
    };
    VcpuInit { regs, sregs }
}

/// A guest run's result: the VM's report and, when the guest delivered one, the
/// measurement (else why not).
#[derive(Debug)]
pub struct GuestRun {
    /// The VM's report (memory, KVM counters of the whole run, exit).
    pub report: RunReport,
    /// The measurement, or why there is none.
    pub measurement: Result<Measurement, MeasureError>,
    /// What the device saw.
    pub outcome: Outcome,
    /// The plan that ran.
    pub plan: Arc<GuestPlan>,
}

/// Boots the measurement guest on `spec` and collects its result.
pub fn run(spec: GuestSpec, opts: &GuestOptions) -> Result<GuestRun, Error> {
    run_with_prefault(spec, opts, Prefault::On)
}

/// [`run`], choosing whether guest RAM is faulted in at set-up
/// ([`MemoryConfig::prefault`]). Every measurement prefaults (a timed guest must not take
/// host faults); only the ptsnap scale benchmark turns it off, to give a guest whose
/// tables map many GiB that it never touches. Hence a separate entry point rather than an
/// option every caller has to set.
pub fn run_with_prefault(
    spec: GuestSpec,
    opts: &GuestOptions,
    prefault: impl Into<Prefault>,
) -> Result<GuestRun, Error> {
    run_inner(spec, opts, prefault.into(), None)
}

/// [`run`] serving the API socket `api` while the guest runs (ping, pause, resume,
/// ptsnap into its snapshot directory, shutdown), as `segvmm run --api-socket` does for
/// every guest.
pub fn run_with_api(
    spec: GuestSpec,
    opts: &GuestOptions,
    prefault: Prefault,
    api: Option<ApiConfig>,
) -> Result<GuestRun, Error> {
    run_inner(spec, opts, prefault, api)
}

fn run_inner(
    spec: GuestSpec,
    opts: &GuestOptions,
    prefault: Prefault,
    api: Option<ApiConfig>,
) -> Result<GuestRun, Error> {
    let info = host::probe()?;
    if spec.guest_pages == PageSize::Size1G && !info.guest_1g_pages {
        return Err(Error::Unavailable(
            "1 GiB guest pages: this host's KVM does not offer pdpe1gb to guests".into(),
        ));
    }
    let plan = Arc::new(GuestPlan::new(spec)?);
    let device = Arc::new(ProbeDevice::new(opts.ptsnap.clone()));
    let (p, d) = (plan.clone(), device.clone());
    let payload = Payload::Custom(Box::new(move |ram: &GuestRam, _: &host::HostInfo| {
        d.attach(ram.memory().clone());
        let img = Image::parse(PROBE_ELF)?;
        Ok(p.load(ram, &img)?)
    }));
    let cfg = VmConfig {
        // Hugetlb backings need whole host pages: round RAM up (the rest stays unused).
        memory: MemoryConfig {
            size: align_up(plan.ram_size, opts.backing.page_size()),
            backing: opts.backing,
            grow_pool: opts.grow_pool,
            prefault,
        },
        vcpus: 1,
        mmu: MmuRequest::Auto,
        timeout: Some(opts.timeout),
        echo_console: false,
        stdin: false,
        payload,
        mmio: Some(device.clone()),
        started: None,
        api_socket: None,
        track_dirty: opts.track_dirty.clone(),
        disks: Vec::new(),
        nets: Vec::new(),
        vsock: None,
    };
    let describe = crate::snapshot::PayloadInfo {
        kind: "probe".into(),
        probe: Some(serde_json::json!({
            "workload": spec.work.workload.name(),
            "footprint": spec.work.footprint,
            "seed": spec.work.seed,
            "count": spec.work.count,
            "guest_pages": spec.guest_pages,
        })),
        ..Default::default()
    };
    let mut builder = VmBuilder::new(cfg).describe(describe);
    if let Some(api) = api {
        builder = builder.api(api);
    }
    let report = builder.build()?.run()?;
    let outcome = device.outcome();
    let measurement = measurement(&spec, opts.backing, &report, &outcome, info.tsc_khz);
    Ok(GuestRun {
        report,
        measurement,
        outcome,
        plan,
    })
}

/// Why a guest run gave no measurement.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MeasureError {
    /// The guest ended without writing its results page.
    #[error("the guest gave no result: {0}")]
    NoResult(String),
    /// The guest took an exception (vector 255: it panicked).
    #[error("{} in the measurement guest: error code {error:#x}, rip {rip:#x}, cr2 {cr2:#x}, cs {cs:#x}, rsp {rsp:#x}", fault_name(*.vector))]
    Fault {
        /// Exception vector (255: a guest panic).
        vector: u64,
        /// Error code.
        error: u64,
        /// Faulting RIP.
        rip: u64,
        /// CR2.
        cr2: u64,
        /// CS.
        cs: u64,
        /// RSP.
        rsp: u64,
    },
    /// The results page lacks the magic.
    #[error("the results page carries no result")]
    NoMagic,
    /// The guest reported a failure status.
    #[error("the guest reported status {code}: {text}")]
    Status {
        /// Status code.
        code: u64,
        /// What it means.
        text: String,
    },
    /// The guest never signalled start and stop.
    #[error("the guest never signalled start and stop")]
    NoStartStop,
}

fn fault_name(vector: u64) -> String {
    if vector == 255 {
        "the guest panicked".to_string()
    } else {
        format!("exception vector {vector}")
    }
}

/// Turns the guest's results page and the device's timestamps into a measurement.
pub fn measurement(
    spec: &GuestSpec,
    backing: Backing,
    report: &RunReport,
    o: &Outcome,
    tsc_khz: Option<u32>,
) -> Result<Measurement, MeasureError> {
    let Some(r) = o.results else {
        return Err(MeasureError::NoResult(report.exit_message.clone()));
    };
    if o.fault {
        return Err(MeasureError::Fault {
            vector: r[RES_FAULT_VECTOR],
            error: r[RES_FAULT_ERROR],
            rip: r[RES_FAULT_RIP],
            cr2: r[RES_FAULT_CR2],
            cs: r[RES_FAULT_CS],
            rsp: r[RES_FAULT_RSP],
        });
    }
    if r[RES_MAGIC] != RESULTS_MAGIC {
        return Err(MeasureError::NoMagic);
    }
    if r[RES_STATUS] != STATUS_OK {
        return Err(MeasureError::Status {
            code: r[RES_STATUS],
            text: status_text(r[RES_STATUS]).to_string(),
        });
    }
    let (Some(start), Some(stop)) = (o.start, o.stop) else {
        return Err(MeasureError::NoStartStop);
    };
    let wall_ns = stop.duration_since(start).as_secs_f64() * 1e9;
    let ops = r[RES_OPS];
    let (elapsed_ns, ns_per_op) = Measurement::timing(
        r[RES_TSC_END].wrapping_sub(r[RES_TSC_START]),
        wall_ns,
        tsc_khz,
        ops,
    );
    let delta = |k: &str| -> Option<u64> {
        Some(o.stats_stop.get(k)?.wrapping_sub(*o.stats_start.get(k)?))
    };
    let init_ns = Measurement::timing(r[RES_INIT_TSC], 0.0, tsc_khz, 1).0;
    Ok(Measurement {
        workload: spec.work.workload.name().into(),
        environment: "guest".into(),
        backing,
        guest_pages: Some(spec.guest_pages),
        footprint: spec.work.footprint,
        seed: spec.work.seed,
        data_va: DATA_VA,
        ops,
        elapsed_ns,
        wall_ns,
        tsc_khz,
        ns_per_op,
        checksum: r[RES_CHECKSUM],
        init_ns,
        kvm_exits: delta("exits"),
        shadow_page_faults: delta("pf_fixed"),
        contiguous_runs: report.memory.contiguous_runs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::layout::{PTE_P, PTE_PS, PTE_RW, PTE_US};

    fn spec(w: Workload, footprint: u64, pages: PageSize) -> GuestSpec {
        GuestSpec {
            work: WorkloadSpec {
                workload: w,
                footprint,
                seed: 1,
                count: None,
            },
            guest_pages: pages,
        }
    }

    #[test]
    fn plan_maps_every_region_entry_by_entry() {
        let plan = GuestPlan::new(spec(Workload::Chase, 8 << 20, PageSize::Size4K)).unwrap();
        let t = &plan.tables;
        // Identity-mapped system pages with their rights.
        let rights = |va| {
            t.translate(va)
                .map(|(pa, e)| (pa, e & (PTE_P | PTE_RW | PTE_US)))
        };
        assert_eq!(rights(GDT_VA), Some((GDT_VA, PTE_P | PTE_RW)));
        assert_eq!(rights(IDT_VA + 8), Some((IDT_VA + 8, PTE_P | PTE_RW)));
        assert_eq!(rights(PARAMS_VA), Some((PARAMS_VA, PTE_P | PTE_US)));
        assert_eq!(
            rights(RESULTS_VA),
            Some((RESULTS_VA, PTE_P | PTE_RW | PTE_US))
        );
        assert_eq!(
            rights(KSTACK_TOP - 8),
            Some((KSTACK_TOP - 8, PTE_P | PTE_RW))
        );
        assert_eq!(
            rights(USTACK_TOP - 8),
            Some((USTACK_TOP - 8, PTE_P | PTE_RW | PTE_US))
        );
        assert_eq!(
            rights(plan.entry),
            Some((plan.entry, PTE_P | PTE_RW | PTE_US))
        );
        assert_eq!(t.translate(0), None, "page 0 stays unmapped");
        assert_eq!(t.translate(MMIO_VA).map(|x| x.0), Some(SIGNAL_MMIO_BASE));
        // Every page of the buffer, 4 KiB leaves, contiguous physical backing.
        for p in 0..(8 << 20) / 4096u64 {
            let (pa, e) = t.translate(DATA_VA + p * 4096 + 24).unwrap();
            assert_eq!(pa, plan.data_gpa + p * 4096 + 24);
            assert_eq!(e & PTE_PS, 0);
            assert_eq!(
                t.leaf_entry(DATA_VA + p * 4096).unwrap().0,
                plan.entries_va + 8 * p
            );
        }
        assert_eq!(t.translate(DATA_VA + (8 << 20)), None);
        // The page tables themselves are mapped (supervisor) so the stub can edit them.
        assert_eq!(
            rights(plan.entries_va),
            Some((plan.entries_va, PTE_P | PTE_RW))
        );
        assert!(plan.ram_size >= plan.data_gpa + (8 << 20));
        assert_eq!(plan.ram_size % (2 << 20), 0);
    }

    #[test]
    fn plan_2m_pages_and_ptchurn_unmapped() {
        let plan = GuestPlan::new(spec(Workload::Gups, 16 << 20, PageSize::Size2M)).unwrap();
        let (pa, e) = plan.tables.translate(DATA_VA + (6 << 20) + 5).unwrap();
        assert_eq!(pa, plan.data_gpa + (6 << 20) + 5);
        assert_ne!(e & PTE_PS, 0);
        assert_eq!(plan.data_gpa % (2 << 20), 0);
        let churn = GuestPlan::new(spec(Workload::PtChurn, 1 << 20, PageSize::Size4K)).unwrap();
        assert_eq!(churn.tables.translate(DATA_VA), None);
        let (entry, _) = churn.tables.leaf_entry(DATA_VA + 4096).unwrap();
        assert_eq!(entry, churn.entries_va + 8);
    }

    #[test]
    fn plan_splits_around_the_hole() {
        let plan = GuestPlan::new(spec(Workload::Chase, 4 << 30, PageSize::Size2M)).unwrap();
        let below = MMIO_HOLE_START - plan.data_gpa;
        assert_eq!(
            plan.tables.translate(DATA_VA + below - 1).map(|x| x.0),
            Some(MMIO_HOLE_START - 1)
        );
        assert_eq!(
            plan.tables.translate(DATA_VA + below).map(|x| x.0),
            Some(MMIO_HOLE_END)
        );
        assert_eq!(plan.ram_size, align_up(plan.data_gpa + (4 << 30), 2 << 20));
    }

    #[test]
    fn bad_specs_are_refused() {
        assert!(matches!(
            GuestPlan::new(spec(Workload::Chase, 3 << 20, PageSize::Size2M)),
            Err(Error::BadSpec(_))
        ));
        assert!(matches!(
            GuestPlan::new(spec(Workload::Chase, 0, PageSize::Size4K)),
            Err(Error::BadSpec(_))
        ));
        assert!(matches!(
            GuestPlan::new(spec(Workload::Chase, 128 << 30, PageSize::Size4K)),
            Err(Error::BadSpec(_))
        ));
    }

    #[test]
    fn descriptor_tables() {
        let g = gdt();
        // TSS descriptor: base TSS_VA, limit 103, busy 64-bit TSS, present.
        assert_eq!(g[6] & 0xffff, TSS_BYTES - 1);
        assert_eq!((g[6] >> 16) & 0xff_ffff, TSS_VA);
        assert_eq!((g[6] >> 40) & 0xff, 0x8b);
        let i = idt();
        let off = |v: usize| (i[2 * v] & 0xffff) | ((i[2 * v] >> 48) << 16) | (i[2 * v + 1] << 32);
        assert_eq!(off(6), IMAGE_BASE + 6 * VECTOR_STUB_BYTES);
        assert_eq!((i[2 * 14] >> 16) & 0xffff, u64::from(KERNEL_CS));
        assert_eq!(i[2 * 40], 0);
        let t = tss();
        assert_eq!(u64::from_le_bytes(t[4..12].try_into().unwrap()), KSTACK_TOP);
        let init = vcpu_init(0x60_0000, 0x40_0100);
        assert_eq!(
            (init.sregs.cs.dpl, init.sregs.ss.dpl, init.sregs.cs.l),
            (3, 3, 1)
        );
        assert_eq!(init.regs.rsp, USTACK_TOP);
    }
}
