"""``curvlab show FILE.nc``: summarise a saved curvature or analysis file.

It prints the kind of object (a curvature representation with its quantity, size and groups; a quality
dataset with its approximations and steps; any other netCDF), the dimensions and variables, the main
attributes, and for a quality dataset the metrics table at the last step.

Example:
    curvlab show curvlab-analysis/quality.nc
    curvlab show curvlab-analysis/curvature.nc --attrs
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import xarray as xr

import curvlab

_LONG = 100


def add_parser(sub) -> None:
    """Register ``curvlab show`` on the sub-parsers."""
    parser = sub.add_parser("show", help="summarise a saved .nc file", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("file", type=Path, help="a .nc file written by curvlab")
    parser.add_argument("--attrs", action="store_true", help="print every attribute in full")
    parser.set_defaults(run=run)


def _short(value) -> str:
    text = str(value)
    return text if len(text) <= _LONG else text[: _LONG - 3] + "..."


def _describe_node(ds: xr.Dataset, indent: str, full_attrs: bool) -> list[str]:
    lines = []
    kind = ds.attrs.get("curvlab_kind")
    if kind is not None:
        lines.append(f"{indent}curvlab {kind} representation of {ds.attrs.get('quantity', '?')!r}"
                     + _partition_text(ds.attrs.get("partition")))
    if ds.sizes:
        lines.append(f"{indent}dims: " + ", ".join(f"{d}={n}" for d, n in ds.sizes.items()))
    for name, var in ds.data_vars.items():
        long_name = var.attrs.get("long_name")
        lines.append(f"{indent}  {name} {tuple(var.dims)} {var.dtype}" + (f"  – {long_name}" if long_name else ""))
    keep = ds.attrs if full_attrs else {k: v for k, v in ds.attrs.items()
                                        if k in ("created", "curvlab_version", "git_sha", "dataset", "reference",
                                                 "skipped", "quantity", "dtype", "batch_size", "step")}
    for key, value in keep.items():
        lines.append(f"{indent}@{key}: {value if full_attrs else _short(value)}")
    return lines


def _partition_text(text) -> str:
    if not text:
        return ""
    try:
        part = curvlab.Partition.from_json(text)
    except (ValueError, KeyError, TypeError):
        return ""
    return f": P={part.num_params}, {part.num_groups} groups ({_short(', '.join(part.group_names))})"


def _quality_table(ds: xr.Dataset) -> list[str]:
    if "matrix_quality" not in ds:
        return []
    steps = ds.step.values.tolist() if "step" in ds.dims else []
    lines = [f"quality dataset: {ds.sizes['approximation']} approximations "
             f"({', '.join(map(str, ds.approximation.values))}), blocks {', '.join(map(str, ds.block.values))}"
             + (f", steps {steps}" if steps else "")]
    lines.append(curvlab.analysis.summarize(ds))
    return lines


def run(args: argparse.Namespace) -> int:
    """Run ``curvlab show``; returns the exit code."""
    obj = curvlab.analysis.netcdf.read(args.file)
    print(f"{args.file}")
    if isinstance(obj, xr.DataTree):
        root = obj.to_dataset(inherit=False)
        print(f"DataTree with {len(obj.children)} groups: {', '.join(obj.children)}")
        print("\n".join(_describe_node(root, "", args.attrs)))
        for node in obj.subtree:
            if node.path == "/":
                continue
            print(f"[{node.path}]")
            print("\n".join(_describe_node(node.to_dataset(inherit=False), "  ", args.attrs)))
        return 0
    print("\n".join(_quality_table(obj) or []))
    print("\n".join(_describe_node(obj, "", args.attrs)))
    config = obj.attrs.get("config")
    if config and not args.attrs:
        try:
            keys = ", ".join(f"{k}={v}" for k, v in json.loads(config).items()
                             if k in ("dataset", "model", "hidden", "steps", "samples", "reference", "partition"))
            print(f"config: {keys}")
        except (ValueError, AttributeError):
            pass
    return 0
