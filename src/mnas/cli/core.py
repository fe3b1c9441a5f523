"""Core commands: `mnas arch show|sample`, `mnas space info`, `mnas zoo`."""

from __future__ import annotations

import json
import random
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from mnas import zoo
from mnas.arch_strings import to_tf_string, to_timm_string
from mnas.architecture import Architecture
from mnas.errors import UserError
from mnas.space import SearchSpace

console = Console()
arch_app = typer.Typer(help="Show, sample and convert architectures.", no_args_is_help=True)
space_app = typer.Typer(help="Inspect search spaces.", no_args_is_help=True)


def _check_resolution(resolution: int) -> None:
    if not 32 <= resolution <= 320:
        raise UserError(f"--resolution {resolution} is out of range; use 32 to 320")


def arch_summary(arch: Architecture, name: str, resolution: int, num_classes: int = 1000) -> dict:
    """Everything `arch show` prints, as one JSON-able dict."""
    _check_resolution(resolution)
    from mnas.profile import count_macs, count_params, model_for  # lazy: torch (see mnas.cli)

    model = model_for(arch, num_classes)
    shapes = arch.output_shapes(resolution)
    blocks = []
    for i, (b, (c, s)) in enumerate(zip(arch.blocks, shapes[1:], strict=True), start=1):
        blocks.append({"block": i, "op": b.op, "label": b.op_label, "kernel": b.kernel,
                       "expand": b.expand, "se_ratio": b.se_ratio, "skip": b.skip,
                       "filters": b.filters, "layers": b.layers, "stride": b.stride,
                       "output_shape": [s, s, c]})
    return {
        "name": name, "id": arch.id, "params": count_params(model),
        "macs": count_macs(model, resolution), "resolution": resolution,
        "num_classes": num_classes, "stem": {"filters": arch.stem_filters, "stride": arch.stem_stride,
                                             "output_shape": [shapes[0][1], shapes[0][1], shapes[0][0]]},
        "head_filters": arch.head_filters, "act": arch.act, "blocks": blocks,
        "timm": to_timm_string(arch), "tf": to_tf_string(arch), "arch": arch.to_dict(),
    }


def _print_summary(info: dict) -> None:
    t = Table(title=f"{info['name']}  (id {info['id']}, {info['resolution']}x{info['resolution']})")
    for col in ("block", "op", "kernel", "expand", "SE", "skip", "layers", "stride", "output"):
        t.add_column(col, justify="right" if col not in ("op", "skip") else "left")
    stem = info["stem"]
    t.add_row("stem", "Conv", "3", "-", "-", "-", "1", str(stem["stride"]), "x".join(map(str, stem["output_shape"])))
    for b in info["blocks"]:
        t.add_row(str(b["block"]), b["label"], str(b["kernel"]), f"{b['expand']:g}",
                  f"{b['se_ratio']:g}" if b["se_ratio"] else "-", b["skip"], str(b["layers"]),
                  str(b["stride"]), "x".join(map(str, b["output_shape"])))
    last = info["blocks"][-1]["output_shape"]
    t.add_row("head", "Conv1x1+pool+FC", "1", "-", "-", "-", "1", "1",
              f"{last[0]}x{last[1]}x{info['head_filters']} -> {info['num_classes']}")
    console.print(t)
    console.print(f"params {info['params']:,}   MACs {info['macs']:,}   activation {info['act']}")
    console.print(f"timm: {info['timm']}")


@arch_app.command("show")
def arch_show(
    target: str = typer.Argument(..., help="A zoo name, an architecture file (JSON/YAML/checkpoint) or a timm/TF string."),
    resolution: int | None = typer.Option(None, help="Input size (default: the model's, else 224)."),
    width_mult: float = typer.Option(1.0, "--width-mult", help="Width multiplier (0.35 to 1.4)."),
    num_classes: int = typer.Option(1000, "--num-classes"),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """A layer table, params and MACs of one architecture."""
    arch, name = zoo.resolve(target, width_mult)
    if resolution is None:
        resolution = zoo.resolution(target) if target in zoo.list() else (32 if arch.stem_stride == 1 else 224)
    info = arch_summary(arch, name, resolution, num_classes)
    if as_json:
        print(json.dumps(info))
    else:
        _print_summary(info)


@arch_app.command("sample")
def arch_sample(
    seed: int = typer.Option(0, help="Random seed."),
    space: str | None = typer.Option(None, help="Space name (mnasnet, mnasnet_cifar) or YAML/JSON file."),
    as_json: bool = typer.Option(False, "--json", help="Print the architecture as JSON."),
) -> None:
    """Sample one architecture uniformly from a space."""
    sp = SearchSpace.load(space)
    arch = sp.sample(random.Random(seed))
    if as_json:
        print(json.dumps({"id": arch.id, "space": sp.name, "tokens": sp.encode(arch), "arch": arch.to_dict(),
                          "timm": to_timm_string(arch)}))
    else:
        _print_summary(arch_summary(arch, f"{sp.name} sample (seed {seed})", sp.resolution))


@space_app.command("info")
def space_info(
    space: str | None = typer.Option(None, help="Space name (mnasnet, mnasnet_cifar) or YAML/JSON file."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """The choices per block and the size of a space."""
    sp = SearchSpace.load(space)
    per_block = [len(sp.block_choices(i)["op"]) * len(sp.kernels) * len(sp.se_ratios) * len(sp.skips)
                 * len(sp.filter_multipliers) * len(sp.layer_deltas) for i in range(sp.num_blocks)]
    if as_json:
        print(json.dumps({"name": sp.name, "size": sp.size(), "choices_per_block": per_block,
                          "decision_sizes": sp.decision_sizes(), "space": sp.to_dict()}))
        return
    t = Table(title=f"space {sp.name}: {sp.num_blocks} blocks, input {sp.resolution}, stem stride {sp.stem_stride}")
    for col in ("block", "stride", "ops", "kernels", "SE", "skips", "filters", "layers", "choices"):
        t.add_column(col)
    for i in range(sp.num_blocks):
        c = sp.block_choices(i)
        t.add_row(str(i + 1), str(sp.strides[i]), " ".join(o.label for o in c["op"]),
                  " ".join(map(str, c["kernel"])), " ".join(f"{x:g}" for x in c["se_ratio"]),
                  " ".join(c["skip"]), " ".join(map(str, c["filters"])), " ".join(map(str, c["layers"])),
                  str(per_block[i]))
    console.print(t)
    console.print(f"size: {sp.size():,} networks ({per_block[0]}^{sp.num_blocks} = {sp.size():.3e})")


def zoo_command(
    resolution: int = typer.Option(224, help="Input size for MACs."),
    width_mult: float = typer.Option(1.0, "--width-mult"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Every zoo model with its params and MACs."""
    _check_resolution(resolution)
    from mnas.profile import count_macs, count_params, model_for  # lazy: torch (see mnas.cli)

    rows: list[dict[str, Any]] = []
    for name in zoo.list():
        arch = zoo.get(name, width_mult)
        model = model_for(arch)
        res = zoo.resolution(name) if resolution == 224 else resolution
        rows.append({"name": name, "id": arch.id, "params": count_params(model),
                     "macs": count_macs(model, res), "resolution": res,
                     "description": zoo.entry(name).description})
    if as_json:
        print(json.dumps(rows))
        return
    t = Table(title=f"mnas zoo (width x{width_mult:g}, 1000 classes)")
    for col in ("model", "params", "MACs", "input", "what"):
        t.add_column(col, justify="left" if col in ("model", "what") else "right")
    for r in rows:
        t.add_row(str(r["name"]), f"{r['params']:,}", f"{r['macs'] / 1e6:,.1f}M", str(r["resolution"]),
                  str(r["description"]))
    console.print(t)


def register(app: typer.Typer) -> None:
    app.add_typer(arch_app, name="arch")
    app.add_typer(space_app, name="space")
    app.command("zoo")(zoo_command)
