"""The library surface the README shows: `import autopar` is enough."""

from __future__ import annotations

import copy

from conftest import PROBLEMS

import autopar


def test_public_names_are_exported():
    for name in autopar.__all__:
        assert hasattr(autopar, name), name
    assert callable(autopar.check) and callable(autopar.solve)


def test_check_takes_a_plan_its_json_or_its_file(tmp_path):
    plan = autopar.solve(PROBLEMS / "models/seed-moe.yaml", PROBLEMS / "hw/seed-3gpu.yaml",
                         pins={"pp": 1}, time_limit_s=5, seed=0)
    path = plan.write(tmp_path / "seed.json")
    for form in (plan, plan.data, path, str(path)):
        assert not [f for f in autopar.check(form) if f.severity == "error"]
    broken = copy.deepcopy(plan.data)
    broken["strategy"]["ep"] = 2
    assert any(f.severity == "error" for f in autopar.check(broken))
    from autopar.check.verify import check_plan  # the module stays importable beside the function

    assert callable(check_plan)
