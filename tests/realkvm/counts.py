#!/usr/bin/env python3
"""Predicted vs counted VM exits of the measurement guest under real KVM (docs/projection.md).

  tests/realkvm/counts.py NPT_RESULTS NPT_PROJ SHADOW_RESULTS SHADOW_PROJ

NPT_RESULTS / SHADOW_RESULTS: results.json of a `segvmm bench` run inside the realkvm VM
with kvm_amd npt=1 / npt=0; *_PROJ: `segvmm project --json` over that directory. Prints
one markdown row per guest run: the projection's exits per operation for the design the
mode runs (nested for NPT, shadow for npt=0), KVM's counts for the timed part (all exits,
page faults fixed), the MMU exits counted, and the error.

MMU exits counted = page faults fixed (pf_fixed: NPT fills under NPT, where KVM intercepts
neither INVLPG nor page-table writes; hidden faults under shadow), except for ptchurn under
shadow paging, whose INVLPG and page-table-write exits count too: there it is all exits
minus the 2 `ud2` requests per cycle to the guest's ring-0 stub (intercepted #UD, not MMU
exits), which leaves in the few timer-interrupt exits of the VM's own ticks (10-20 a run).
"""
import json
import sys


def rows(results, proj, design):
    shadow = design == "shadow"
    res = json.load(open(results))
    pj = json.load(open(proj))
    pred = {}
    for r in pj["runs"]:
        if not r["environment"].startswith("guest"):
            continue
        t = r["projected_terms"][design]
        pred[(r["workload"], r["backing"], r["environment"])] = t["exits_per_op"]
    for row in res["rows"]:
        m = row["measurement"]
        if not row["environment"].startswith("guest") or not m:
            continue
        key = (row["workload"], row["backing"], row["environment"])
        ops = m["ops"]
        exits, pf = m["kvm_exits"], m["shadow_page_faults"]
        mmu = exits - 2 * ops if row["workload"] == "ptchurn" and shadow else pf
        yield key, ops, pred.get(key), exits / ops, pf / ops, mmu / ops


def fmt(x):
    if x is None:
        return "-"
    if x == 0:
        return "0"
    return f"{x:.4f}" if x < 0.01 else f"{x:.3f}"


def main():
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    print("| workload | host pages | guest pages | mode | predicted MMU exits/op | "
          "counted exits/op (all) | counted faults/op | counted MMU exits/op | error |")
    print("|---|---|---|---|---|---|---|---|---|")
    for results, proj, mode, design in [
        (sys.argv[1], sys.argv[2], "NPT", "nested"),
        (sys.argv[3], sys.argv[4], "shadow", "shadow"),
    ]:
        for (wl, back, env), _ops, p, ex, pf, mmu in rows(results, proj, design):
            err = "-"
            if p is not None and mmu > 0:
                err = f"{(p - mmu) / mmu * 100:+.1f} %"
            elif p is not None and p == 0 and mmu < 0.01:
                err = "both ~0"
            host = {"4k": "4K", "thp": "2M (THP)"}.get(back, back)
            print(f"| {wl} | {host} | {env.removeprefix('guest-').upper()} | {mode} | "
                  f"{fmt(p)} | {fmt(ex)} | {fmt(pf)} | {fmt(mmu)} | {err} |")


main()
