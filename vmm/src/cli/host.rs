//! `segvmm host`: what this host's KVM offers.

use super::{CliError, CliResult};

/// Options of `segvmm host`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Runs `segvmm host`.
pub fn run(args: Args) -> CliResult {
    let info = crate::host::probe().map_err(CliError::failed)?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&info).map_err(CliError::failed)?
        );
        return Ok(0);
    }
    println!("KVM API version   {}", info.kvm_api_version);
    println!("KVM module        {}", info.kvm_module);
    println!(
        "MMU mode          {} ({})",
        info.mmu_mode, info.mmu_mode_source
    );
    println!(
        "guest 1 GiB pages {}",
        if info.guest_1g_pages {
            "offered (pdpe1gb)"
        } else {
            "not offered (no pdpe1gb in KVM's CPUID)"
        }
    );
    match info.tsc_khz {
        Some(k) => println!("guest TSC         {k} kHz"),
        None => println!("guest TSC         unknown"),
    }
    println!("THP               {}", info.thp_mode);
    for p in &info.hugepage_pools {
        println!(
            "hugetlb {:>7}   {} pages, {} free",
            format!("{}K", p.page_size / 1024),
            p.total,
            p.free
        );
    }
    println!("capabilities");
    for (k, v) in &info.capabilities {
        println!("  {k:<36} {}", if *v { "yes" } else { "no" });
    }
    if !info.workarounds.is_empty() {
        println!("workarounds this host needs");
        for w in &info.workarounds {
            println!("  - {w}");
        }
    }
    Ok(0)
}
