"""Mixed GPU groups (issue 17): the hardware files, the mixed pipeline search, uneven shards,
the check of a mixed plan and the exhaustive oracle on small mixed cases."""

from __future__ import annotations

import pytest
import yaml

from autopar.errors import InputError
from autopar.spec import load_hardware, parse_hardware
from autopar.spec.files import load_any_hardware
from autopar.spec.groups import MixedHardware, fastest, parse_groups, slowest

MIXED = "problems/hw/h100-a100-mixed.yaml"
H100 = {"type": "H100-SXM5-80GB"}
A100 = {"type": "A100-SXM4-80GB"}


def two(**over) -> dict:
    d = {"name": "t", "groups": [
        {"name": "h", "gpu": H100, "gpus_per_node": 8},
        {"name": "a", "gpu": A100, "gpus_per_node": 8}],
        "inter_node": {"bandwidth_gbps": 25, "latency_us": 8}}
    d.update(over)
    return d


def test_one_group_is_todays_spec():
    flat = load_hardware("problems/hw/h100-8x.yaml")
    data = yaml.safe_load(open("problems/hw/h100-8x.yaml"))
    grouped = {"name": data.pop("name"), "groups": [data]}
    assert parse_hardware(grouped, "g.yaml") == flat
    assert load_any_hardware("problems/hw/h100-7gpu.yaml").num_gpus == 7


def test_mixed_file_reads_groups_in_order():
    hw = load_any_hardware(MIXED)
    assert isinstance(hw, MixedHardware)
    assert [g.first_gpu for g in hw.groups] == [0, 8] and hw.num_gpus == 16
    assert hw.group_of(9).hw.gpu.name == "A100-SXM4-80GB"
    assert slowest(hw, "bf16").name == "a100" and fastest(hw, "bf16").name == "h100"
    assert hw.groups[1].hw.intra.bytes_per_s == 300e9
    assert hw.groups[0].hw.inter == hw.inter  # the file's NIC link is each group's default
    both = hw.uniform(hw.groups[1])
    assert both.num_gpus == 16 and both.gpu.name == "A100-SXM4-80GB" and both.nodes == 2
    pcie = load_any_hardware("problems/hw/h100-l40s-pcie.yaml")
    assert pcie.groups[1].hw.intra.bytes_per_s == 25e9


@pytest.mark.parametrize("data, field, words", [
    (two(inter_node=None), "inter_node", "between GPU groups"),
    (two(groups=[{"name": "h", "gpu": {"type": "H999"}, "gpus_per_node": 8}]),
     "groups[0].gpu.type", "unknown GPU"),
    (two(groups=[{"name": "h", "gpu": H100, "gpus_per_node": 8, "colour": 1}]),
     "groups[0].colour", "unknown field"),
    (two(groups=[{"name": "h", "gpu": H100, "gpus_per_node": 8},
                 {"name": "h", "gpu": A100, "gpus_per_node": 8}]), "groups[1].name", "two"),
    (two(groups=[{"name": "h", "gpu": H100, "gpus_per_node": 0}]),
     "groups[0].gpus_per_node", "out of range"),
    (two(groups=[]), "groups", "non-empty"),
])
def test_bad_groups_are_one_line_errors(data, field, words):
    with pytest.raises(InputError) as e:
        parse_groups(data, "bad.yaml")
    assert e.value.source == "bad.yaml" and e.value.field == field
    assert words in e.value.problem and "\n" not in str(e.value)


def test_one_type_paths_refuse_a_mixed_file_in_one_line():
    with pytest.raises(InputError) as e:
        load_hardware(MIXED)
    assert e.value.field == "groups" and "2 GPU groups" in str(e.value)
