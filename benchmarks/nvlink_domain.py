"""What the NVLink domain and the mesh topology change in a plan: Mixtral-8x7B training on two
GB200 NVL72 racks with the rack as the domain vs each 4-GPU tray its own domain (all that could
be described before `nvlink_domain`), and on one MI300X node as a mesh vs one 64 GB/s port.

    PYTHONPATH=. python benchmarks/nvlink_domain.py [--time-limit 20]
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace

from autopar.api import solve
from autopar.spec import load_hardware

MODEL = "problems/models/mixtral-8x7b.yaml"


def row(label: str, hw, limit: float) -> str:
    d = json.loads(solve(MODEL, hw, time_limit_s=limit, seed=0, workers=1).to_json())
    s, m = d["strategy"], d["metrics"]
    return (f"| {label} | {s['tp']} | {s['pp']} | {s['dp']} | {s['ep']} | "
            f"{m['step_time_s']:.4f} | {m['mfu']:.3f} |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--time-limit", type=float, default=20.0)
    limit = ap.parse_args().time_limit
    racks = load_hardware("problems/hw/gb200-nvl72x2.yaml")
    mesh = load_hardware("problems/hw/mi300x-8x.yaml")
    print("| hardware | TP | PP | DP | EP | step s | MFU |\n|---|---|---|---|---|---|---|")
    for label, hw in (("2 x GB200 NVL72, domain 72", racks),
                      ("2 x GB200 NVL72, domain 4 (tray)", replace(racks, nodes_per_domain=1)),
                      ("8 x MI300X, mesh", mesh),
                      ("8 x MI300X, one 64 GB/s port", replace(mesh, intra_topology="switch"))):
        print(row(label, hw, limit))


if __name__ == "__main__":
    main()
