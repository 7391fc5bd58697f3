"""benchmarks/calibration_gap.py explains a step only if its per-component rows add up to the
step the plan reports: the decode step of Qwen3-30B-A3B and the training micro-batch forward
of Mixtral-8x7B, under the defaults and under --calibration bundled."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_component_sums_equal_the_plans_step(tmp_path):
    out = tmp_path / "gap.md"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks/calibration_gap.py"),
                        "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    text = out.read_text()
    pairs = re.findall(r"table sum ([\d.]+) ms; plan step \(decode_step_s\) ([\d.]+) ms|"
                       r"table sum ([\d.]+) ms; .*?fwd per micro-batch ([\d.]+) ms", text)
    assert len(pairs) == 4  # two cases x two calibrations
    for a, b, c, d in pairs:
        total, step = (a, b) if a else (c, d)
        assert float(total) == float(step) > 0
    plans = re.findall(r"plan step \((?:decode_step_s|step_time_s)\) ([\d.]+) ms", text)
    assert len(plans) == 4 and plans[0] != plans[1]  # bundled moves the decode step
