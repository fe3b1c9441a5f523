"""`mnas latency ...`: measure, the zoo table, build / validate a lookup table, list targets."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from mnas.errors import UserError

app = typer.Typer(help="Measure latency on real runtimes; build and validate lookup tables.",
                  no_args_is_help=True)

_BACKEND = typer.Option("litert", "--backend", "-b", help="litert | onnxruntime | torch | android")


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="latency")


def _target(backend: str, threads: int, resolution: int, num_classes: int = 1000, device: str = "cpu",
            channels_last: bool = False, serial: str | None = None, binary: str | None = None):
    from mnas.latency.target import Target

    return Target(backend=backend, threads=threads, resolution=resolution, num_classes=num_classes,
                  device=device, channels_last=channels_last, serial=serial, benchmark_binary=binary)


def _cache(no_cache: bool):
    from mnas.latency.cache import LatencyCache

    return None if no_cache else LatencyCache()


def _default_resolution(text: str) -> int:
    from mnas import zoo

    return zoo.resolution(text) if text in zoo.list() else 224


@app.command()
def measure(
    name_or_file: str = typer.Argument(..., help="zoo name, architecture file or architecture string"),
    backend: str = _BACKEND,
    threads: int = typer.Option(1, "--threads", "-t"),
    resolution: Optional[int] = typer.Option(None, "--resolution", "-r", help="default: the model's (224)"),
    width: float = typer.Option(1.0, "--width", help="width multiplier"),
    processes: int = typer.Option(3, "--processes", "-p", help="separate measuring processes (>= 3)"),
    fresh: bool = typer.Option(False, "--fresh", help="measure again even if cached"),
    device: str = typer.Option("cpu", "--device", help="cpu | cuda (torch backend)"),
    channels_last: bool = typer.Option(False, "--channels-last", help="torch backend"),
    serial: Optional[str] = typer.Option(None, "--serial", help="adb serial (android)"),
    benchmark_binary: Optional[str] = typer.Option(None, "--benchmark-binary", help="benchmark_model for the phone"),
    as_json: bool = typer.Option(False, "--json", help="print the result as JSON"),
) -> None:
    """Measure one network with the protocol (cached by architecture x target)."""
    from mnas import zoo
    from mnas.latency.protocol import measure as run

    arch, label = zoo.resolve(name_or_file, width)
    target = _target(backend, threads, resolution or _default_resolution(name_or_file), device=device,
                     channels_last=channels_last, serial=serial, binary=benchmark_binary)
    result = run(arch, target, processes=processes, fresh=fresh)
    if as_json:
        d = result.to_dict()
        d.update(name=label, arch_id=arch.id, runtime=target.runtime_version)
        typer.echo(json.dumps(d, indent=2))
        return
    cached = " (cached)" if result.cached else ""
    typer.echo(f"{label}: {result.median_ms:.3f} ms on {target.label} [{target.runtime_version}]{cached}")
    typer.echo(f"  p10 {result.p10_ms:.3f}  p90 {result.p90_ms:.3f}  cv {100 * result.cv:.1f}%  "
               f"spread {100 * result.spread:.1f}%  processes {result.processes}  runs {result.runs}  "
               f"preempted {100 * result.preempted_fraction:.1f}%")
    if not result.stable:
        from mnas.latency.protocol import Protocol

        typer.echo(f"  warning: the {result.used_processes} fastest of {result.processes} processes still "
                   f"disagreed by more than {100 * Protocol().max_spread:.0f}%; the machine is busy, "
                   "measure again when it is quieter", err=True)


@app.command()
def table(
    backend: list[str] = typer.Option(["litert"], "--backend", "-b", help="repeat for several backends"),
    models: Optional[str] = typer.Option(None, "--models", help="comma-separated zoo names (default: all)"),
    widths: str = typer.Option("", "--widths", help="also mnasnet_a1 at these width multipliers, e.g. 0.5,0.75,1.4"),
    threads: int = typer.Option(1, "--threads", "-t"),
    processes: int = typer.Option(3, "--processes", "-p"),
    fresh: bool = typer.Option(False, "--fresh"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """The zoo side by side: params, MACs and latency per backend (like the paper's tables 1 and 6)."""
    from rich.console import Console
    from rich.table import Table

    from mnas import zoo
    from mnas.latency.protocol import measure_many
    from mnas.profile import profile

    names = [m.strip() for m in models.split(",")] if models else zoo.list()
    rows = [(n, zoo.get(n), zoo.resolution(n)) for n in names]
    for w in [float(x) for x in widths.split(",") if x.strip()]:
        rows.append((f"mnasnet_a1_x{w:g}", zoo.get("mnasnet_a1", w), 224))
    lat: dict[str, list[float]] = {}
    for b in backend:
        lat[b] = [0.0] * len(rows)
        for res in sorted({r for _, _, r in rows}):
            idx = [i for i, row in enumerate(rows) if row[2] == res]
            results = measure_many([rows[i][1] for i in idx], _target(b, threads, res),
                                   processes=processes, fresh=fresh)
            for i, r in zip(idx, results):
                lat[b][i] = r.median_ms
    out = []
    for i, (name, arch, res) in enumerate(rows):
        p = profile(arch, resolution=res)
        out.append({"name": name, "resolution": res, "params_m": p.params / 1e6, "macs_m": p.macs / 1e6,
                    **{f"{b}_ms": lat[b][i] for b in backend}})
    if as_json:
        typer.echo(json.dumps(out, indent=2))
        return
    t = Table(title=f"latency, {threads} thread(s), batch 1")
    for col in ["model", "input", "params (M)", "MACs (M)", *[f"{b} (ms)" for b in backend]]:
        t.add_column(col, justify="left" if col == "model" else "right")
    for r in out:
        t.add_row(r["name"], str(r["resolution"]), f"{r['params_m']:.2f}", f"{r['macs_m']:.0f}",
                  *[f"{r[f'{b}_ms']:.2f}" for b in backend])
    Console().print(t)


@app.command("build-lut")
def build_lut_cmd(
    out: Path = typer.Option(..., "--out", "-o", help="where to write the table (JSON)"),
    target: str = typer.Option("onnxruntime", "--target", "--backend", "-b", help="litert | onnxruntime | torch"),
    space: str = typer.Option("mnasnet", "--space", "-s", help="mnasnet | mnasnet_cifar | a YAML/JSON space file"),
    threads: int = typer.Option(1, "--threads", "-t"),
    resolution: Optional[int] = typer.Option(None, "--resolution", "-r", help="default: the space's"),
    calibration: int = typer.Option(32, "--calibration", help="whole models measured to fit the calibration"),
    pack_size: Optional[int] = typer.Option(None, "--pack-size", help="layers per exported model"),
    processes: int = typer.Option(3, "--processes", "-p"),
) -> None:
    """Measure every layer configuration of a space (resumable; progress and ETA shown)."""
    from mnas.latency.lut import build_lut
    from mnas.space import SearchSpace

    sp = SearchSpace.load(space)
    tgt = _target(target, threads, resolution or sp.resolution)
    tab = build_lut(sp, tgt, out, processes=processes, calibration=calibration, pack_size=pack_size)
    b, c = tab.build, tab.calibration
    typer.echo(f"wrote {out}: {b['units']} entries for {tgt.label} in {b['seconds']:.0f} s "
               f"(layers {b['layer_seconds']:.0f} s); calibration on {c.get('samples', 0)} models, "
               f"fit MAPE {c.get('fit_mape', float('nan')):.1f}%")


@app.command("validate-lut")
def validate_lut_cmd(
    lut: Path = typer.Argument(..., help="a table written by build-lut"),
    samples: int = typer.Option(100, "--samples", "-n"),
    processes: int = typer.Option(3, "--processes", "-p"),
    seed: int = typer.Option(777, "--seed"),
    plot: Optional[Path] = typer.Option(None, "--plot", help="scatter plot (default: next to the table)"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Measure random architectures for real and compare with the table's predictions."""
    from mnas.latency.lut import LatencyTable, validate_lut

    tab = LatencyTable.load(lut)
    plot = plot or lut.with_suffix(".validation.png")
    v = validate_lut(tab, samples, seed=seed, processes=processes, plot=plot)
    if as_json:
        typer.echo(json.dumps(v.to_dict(), indent=2))
        return
    verdict = "meets" if v.meets_bar else "misses"
    typer.echo(f"{v.n} architectures on {tab.target.label}: MAPE {v.mape:.2f}%  RMSE {v.rmse_ms:.3f} ms  "
               f"Kendall tau {v.kendall_tau:.3f}  within 5% {v.within_5:.0f}%  within 10% {v.within_10:.0f}%  "
               f"predict {v.predict_us:.0f} us/arch; {verdict} the bar (MAPE<=5%, tau>=0.9, 100% within 10%)")
    typer.echo(f"scatter plot: {plot}")


@app.command()
def targets(as_json: bool = typer.Option(False, "--json")) -> None:
    """What this machine can measure, with runtime versions."""
    from mnas.latency.backends import backend_names, get_backend
    from mnas.latency.target import Target

    rows = []
    for name in backend_names():
        be = get_backend(name)
        reason = be.unavailable()
        version = be.version(Target(backend="litert")) if name != "android" else "benchmark_model (user-supplied)"
        detail = ""
        if name == "android" and reason is None:
            detail = _android_devices()
        rows.append({"backend": name, "available": reason is None, "version": version,
                     "note": reason or detail})
    try:
        import torch

        if torch.cuda.is_available():
            rows.append({"backend": "torch (cuda)", "available": True,
                         "version": f"torch {torch.__version__}", "note": torch.cuda.get_device_name(0)})
        else:
            rows.append({"backend": "torch (cuda)", "available": False, "version": f"torch {torch.__version__}",
                         "note": "no GPU visible"})
    except ImportError:  # pragma: no cover - torch is a core dependency
        pass
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        mark = "yes" if r["available"] else "no "
        typer.echo(f"{r['backend']:<14} {mark}  {r['version']:<32} {r['note']}")


def _android_devices() -> str:
    from mnas.latency.backends.android import Adb

    try:
        adb = Adb(timeout_s=10, retries=0)
        return "device " + adb.device()
    except UserError as exc:
        return str(exc).split(";")[0]
