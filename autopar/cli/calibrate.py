"""`autopar calibrate`: a calibration file from measured kernels (docs/calibration.md)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from . import options as opt
from .app import main
from .run import guard

INSTALL_HINT = "pip install 'autopar[calibrate]'"


@main.command(epilog=opt.epilog("calibrate"))
@click.option("--gemm-csv", type=click.Path(dir_okay=False), default=None,
              help="CSV of your GEMM timings, header m,n,k,dtype,time_us")
@click.option("--nccl", multiple=True, metavar="[OP=]FILE",
              help="nccl-tests output (all_reduce_perf etc.); OP= when the header lacks it; "
                   "repeatable")
@click.option("--from-aiconfigurator", "aic_system", default=None, metavar="SYSTEM",
              help="read the aiconfigurator-core package's tables for SYSTEM (h100_sxm, "
                   "b200_sxm, ...); needs the calibrate extra")
@click.option("--aiconfigurator-data", "aic_root", type=click.Path(file_okay=False),
              default=None, help="the package's systems/data folder (default: the installed "
                                 "package's)")
@click.option("--all-shapes", is_flag=True,
              help="with --from-aiconfigurator: every measured m, not only powers of two")
@click.option("--moe-framework", type=click.Choice(["vllm", "sglang", "trtllm", "none"]),
              default="vllm", show_default=True,
              help="with --from-aiconfigurator: whose measured fused-MoE kernels to read "
                   "(served MoE layers), or none")
@click.option("--gpu", default=None, help="the GPU the measurements come from (in notes)")
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False),
              help="calibration YAML to write")
def calibrate(gemm_csv, nccl, aic_system, aic_root, all_shapes, moe_framework, gpu,
              out_path) -> None:
    """Write a calibration YAML (for --calibration) from measured GEMM and NCCL tables."""
    from ..cost import measured
    from ..errors import InputError

    root = Path(aic_root) if aic_root else None
    if aic_system and root is None:
        root = measured.aiconfigurator_root()
        if root is None:
            click.echo(f"autopar: error: --from-aiconfigurator needs the aiconfigurator-core "
                       f"package: {INSTALL_HINT}", err=True)
            sys.exit(2)

    def run() -> str:
        from ..plan.files import check_target
        from ..spec.datafile import read_text

        check_target(out_path)  # before reading any table, not after
        if not (gemm_csv or nccl or aic_system):
            raise InputError("autopar calibrate", "", "nothing to read: give --gemm-csv, "
                             "--nccl or --from-aiconfigurator")
        gemm: list[dict] = []
        moe: list[dict] = []
        colls: dict[str, list[dict]] = {}
        sources = []
        if aic_system:
            g, c = measured.read_aiconfigurator(aic_system, root,
                                                "all" if all_shapes else "pow2")
            gemm += g
            if moe_framework != "none":
                moe = measured.read_aiconfigurator_moe(aic_system, root, moe_framework,
                                                       "all" if all_shapes else "pow2")
            for link, rows in c.items():
                colls.setdefault(link, []).extend(rows)
            sources.append(f"aiconfigurator-core {aic_system} (Apache-2.0)")
        if gemm_csv:
            gemm += measured.read_gemm_csv(read_text(gemm_csv), gemm_csv)
            sources.append(gemm_csv)
        for item in nccl:
            op, _, path = item.rpartition("=") if "=" in item else ("", "", item)
            if op and op not in measured.OPS:
                raise InputError(item, "--nccl", f"{op!r} is not one of "
                                                 f"{', '.join(measured.OPS)}")
            link, rows = measured.read_nccl_tests(read_text(path), path, op or None)
            colls.setdefault(link, []).extend(rows)
            sources.append(path)
        notes = "autopar calibrate" + (f" for {gpu}" if gpu else "") + ": " + ", ".join(sources)
        data = measured.calibration_data(gemm, colls, notes, moe)
        _check_readable(data)
        _write(out_path, data)
        return f"{out_path}: {len(data.get('gemm_table', []))} GEMM shapes, " \
               f"{sum(len(r) for r in data.get('collectives', {}).values())} collective " \
               f"sizes, {sum(len(r['tokens']) for r in data.get('moe_table', []))} fused-MoE " \
               f"measurements"

    click.echo(guard(run))


def _values(x) -> int:
    """YAML nodes as the reader counts them: every mapping, list, key and scalar."""
    if isinstance(x, dict):
        return 1 + sum(1 + _values(v) for v in x.values())
    if isinstance(x, list):
        return 1 + sum(_values(v) for v in x)
    return 1


def _check_readable(data: dict) -> None:
    """Refuse to write a file that `--calibration` could not read back (the reader's bound
    on values, `spec.datafile.MAX_YAML_VALUES`)."""
    from ..errors import InputError
    from ..spec.datafile import MAX_YAML_VALUES

    n = _values(data)
    if n > MAX_YAML_VALUES:
        raise InputError("--out", "", f"the tables hold {n:,} values, over the "
                                      f"{MAX_YAML_VALUES:,} a calibration file may hold; "
                                      "drop --all-shapes or give fewer shapes")


def _write(path: str, data: dict) -> None:
    """Rows one per line in flow style, so the file stays readable and diffable."""
    import yaml

    from ..plan import write_atomic

    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)  # libyaml where built with it
    write_atomic(path, yaml.dump(data, Dumper=dumper, default_flow_style=None,
                                 sort_keys=False, width=1_000_000).rstrip("\n"))
