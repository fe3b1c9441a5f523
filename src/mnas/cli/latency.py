"""`mnas latency ...`: measure, the reference, the zoo table, build / validate a lookup table, targets.

Every option is checked before any work starts: no value silently replaced by a default, no
thread count above the cores present (unless --force-threads), no existing table overwritten
(unless --force), no output path that cannot be written.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
from pathlib import Path
from typing import Any

import typer

from mnas import zoo
from mnas.architecture import MAX_RESOLUTION, MIN_RESOLUTION, whole_number
from mnas.errors import UserError, keeps
from mnas.latency.backends.base import get_backend
from mnas.latency.backends.registry import backend_names
from mnas.latency.measure.lifetime import terminate_as_exit
from mnas.latency.measure.measuring import check_threads, measure_many, reference_latency
from mnas.latency.measure.protocol import DEFAULT_REFERENCE, PROCESSES, Protocol, check_processes
from mnas.latency.measure.result import LatencyResult, ReferenceLatency
from mnas.latency.tables.build import MAX_COUNT, build_lut, check_output, check_sizes, check_tables, partial_path, refine_lut
from mnas.latency.tables.plot import scatter
from mnas.latency.tables.predict import LatencyTable
from mnas.latency.tables.validate import validate_lut
from mnas.latency.target import Target
from mnas.paths import output_file
from mnas.space import SearchSpace

app = typer.Typer(help="Measure latency on real runtimes; build and validate lookup tables.",
                  no_args_is_help=True)

_BACKEND = typer.Option("litert", "--backend", "-b", help=" | ".join(backend_names()))
_THREADS = typer.Option(1, "--threads", "-t", help="runtime threads (at most the cores here)")
_FORCE_THREADS = typer.Option(False, "--force-threads", help="allow more threads than cores")
_PROCESSES = typer.Option(PROCESSES, "--processes", "-p", help=f"separate measuring processes (>= {PROCESSES})")
_REFERENCE = typer.Option(DEFAULT_REFERENCE, "--reference",
                          help="network timed in alternation with the candidate (zoo name or arch); 'none': absolute only")


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="latency")


def _target(backend: str, threads: int, resolution: int, force_threads: bool, num_classes: int = 1000,
            device: str = "cpu", channels_last: bool = False, serial: str | None = None,
            binary: str | None = None) -> Target:
    """The target, with the thread count checked against this machine's cores for local backends."""
    if threads < 1:
        raise UserError(f"--threads must be >= 1 (got {threads})")
    whole_number(resolution, "--resolution", MIN_RESOLUTION, MAX_RESOLUTION)
    if backend in backend_names() and get_backend(backend).local:
        check_threads(threads, force_threads)
    return Target(backend=backend, threads=threads, resolution=resolution, num_classes=num_classes,
                  device=device, channels_last=channels_last, serial=serial, benchmark_binary=binary)


def _count(value: int, flag: str, low: int) -> int:
    """A count a user sizes, bounded as a table build's are, so a typo is one line, not hours of measuring."""
    return whole_number(value, flag, low, MAX_COUNT)


def _processes(processes: int) -> int:
    return check_processes(processes, "--processes")


def _reference(text: str) -> str | None:
    return None if text.strip().lower() == "none" else text


def _resolution(given: int | None, default: int) -> int:
    return default if given is None else given


def _reference_line(ref: ReferenceLatency) -> str:
    return (f"{ref.name} = {ref.ms:.3f} ms on {ref.target.label}, measured {ref.date} "
            f"({ref.spread_text()}{'' if ref.stable else ', unstable'})")


def _date(t: float | None) -> str | None:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d %H:%M UTC") if t else None


def _result_dict(result: LatencyResult, label: str, target: Target) -> dict[str, Any]:
    d = result.to_dict()
    d.update(name=label, arch_id=result.arch_id, runtime=target.runtime_version,
             reference_date=_date(result.reference_measured_at))
    return d


@app.command()
def measure(
    name_or_file: str = typer.Argument(..., help="zoo name, architecture file or architecture string"),
    backend: str = _BACKEND,
    threads: int = _THREADS,
    resolution: int | None = typer.Option(None, "--resolution", "-r", help="default: the model's (224)"),
    width: float = typer.Option(1.0, "--width", help="width multiplier"),
    processes: int = _PROCESSES,
    reference: str = _REFERENCE,
    fresh: bool = typer.Option(False, "--fresh", help="measure again even if cached"),
    device: str = typer.Option("cpu", "--device", help="cpu | cuda (torch backend)"),
    channels_last: bool = typer.Option(False, "--channels-last", help="torch backend"),
    serial: str | None = typer.Option(None, "--serial", help="adb serial (android)"),
    benchmark_binary: str | None = typer.Option(None, "--benchmark-binary", help="benchmark_model for the phone"),
    force_threads: bool = _FORCE_THREADS,
    as_json: bool = typer.Option(False, "--json", help="print the result as JSON"),
) -> None:
    """Measure one network with the protocol, against a reference (cached by architecture x target).

    The network measured is the one that runs at that resolution (`Architecture.for_resolution`)."""
    _processes(processes)
    if width <= 0:
        raise UserError(f"--width must be > 0 (got {width})")
    arch, label = zoo.resolve(name_or_file, width)
    default = zoo.resolution(name_or_file) if name_or_file in zoo.list() else 224
    target = _target(backend, threads, _resolution(resolution, default), force_threads, device=device,
                     channels_last=channels_last, serial=serial, binary=benchmark_binary)
    protocol = Protocol(force_threads=force_threads)
    with terminate_as_exit():
        result = measure_many([arch.for_resolution(target.resolution)], target, processes=processes, fresh=fresh,
                              protocol=protocol, reference=_reference(reference))[0]
    if as_json:
        typer.echo(json.dumps(_result_dict(result, label, target), indent=2))
        return
    cached = " (cached)" if result.cached else ""
    typer.echo(f"{label}: {result.median_ms:.3f} ms on {target.label} [{target.runtime_version}]{cached}")
    if result.relative is not None:
        typer.echo(f"  = {result.relative:.4f} x {result.reference} ({result.reference_ms:.3f} ms, measured "
                   f"{_date(result.reference_measured_at)}, spread {100 * (result.reference_spread or 0):.1f}%); "
                   f"this run's own time {result.raw_ms:.3f} ms")
    typer.echo(f"  p10 {result.p10_ms:.3f}  p90 {result.p90_ms:.3f}  cv {100 * result.cv:.1f}%  "
               f"{result.spread_text()}  runs {result.runs}  "
               f"preempted {100 * result.preempted_fraction:.1f}%")
    if not result.stable:
        limit = protocol.max_relative_spread if result.relative is not None else protocol.max_spread
        typer.echo(f"  warning: the {result.used_processes} chosen of {result.processes} processes still "
                   f"disagreed by more than {100 * limit:.0f}%; the machine is busy, "
                   "measure again when it is quieter", err=True)


@app.command("reference")
def reference_cmd(
    name: str = typer.Argument(DEFAULT_REFERENCE, help="the reference network (zoo name or arch)"),
    backend: str = _BACKEND,
    threads: int = _THREADS,
    resolution: int = typer.Option(224, "--resolution", "-r"),
    num_classes: int = typer.Option(1000, "--num-classes"),
    processes: int = _PROCESSES,
    fresh: bool = typer.Option(False, "--fresh", help="measure again (the new value is used from then on)"),
    serial: str | None = typer.Option(None, "--serial", help="adb serial (android)"),
    benchmark_binary: str | None = typer.Option(None, "--benchmark-binary", help="benchmark_model for the phone"),
    force_threads: bool = _FORCE_THREADS,
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """The reference network's latency on a target: what relative latencies are scaled by."""
    _processes(processes)
    target = _target(backend, threads, resolution, force_threads, num_classes=num_classes, serial=serial,
                     binary=benchmark_binary)
    with terminate_as_exit():
        ref = reference_latency(target, name, processes=processes, fresh=fresh,
                                protocol=Protocol(force_threads=force_threads))
    typer.echo(json.dumps(ref.to_dict(), indent=2) if as_json else _reference_line(ref))


@app.command()
def table(
    backend: list[str] = typer.Option(["litert"], "--backend", "-b", help="repeat for several backends"),
    models: str | None = typer.Option(None, "--models", help="comma-separated zoo names (default: all)"),
    widths: str = typer.Option("", "--widths", help="also mnasnet_a1 at these width multipliers, e.g. 0.5,0.75,1.4"),
    threads: int = _THREADS,
    processes: int = _PROCESSES,
    reference: str = _REFERENCE,
    fresh: bool = typer.Option(False, "--fresh"),
    force_threads: bool = _FORCE_THREADS,
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """The zoo side by side: params, MACs and latency per backend (like the paper's tables 1 and 6)."""
    from rich.console import Console  # lazy: terminal rendering only here
    from rich.table import Table

    from mnas.profile import profile  # lazy: imports torch

    _processes(processes)
    names = [m.strip() for m in models.split(",")] if models else zoo.list()
    rows = [(n, zoo.get(n), zoo.resolution(n)) for n in names]
    for w in [float(x) for x in widths.split(",") if x.strip()]:
        rows.append((f"mnasnet_a1_x{w:g}", zoo.get("mnasnet_a1", w), 224))
    targets = {(b, res): _target(b, threads, res, force_threads) for b in backend for _, _, res in rows}
    lat: dict[str, list[float]] = {}
    with terminate_as_exit():
        for b in backend:
            lat[b] = [0.0] * len(rows)
            for res in sorted({r for _, _, r in rows}):
                idx = [i for i, row in enumerate(rows) if row[2] == res]
                results = measure_many([rows[i][1] for i in idx], targets[(b, res)], processes=processes, fresh=fresh,
                                       protocol=Protocol(force_threads=force_threads), reference=_reference(reference))
                for i, r in zip(idx, results, strict=True):
                    lat[b][i] = r.median_ms
    out: list[dict[str, Any]] = []
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
    for row in out:
        t.add_row(str(row["name"]), str(row["resolution"]), f"{row['params_m']:.2f}", f"{row['macs_m']:.0f}",
                  *[f"{row[f'{b}_ms']:.2f}" for b in backend])
    Console().print(t)


@app.command("build-lut")
def build_lut_cmd(
    out: Path = typer.Option(..., "--out", "-o", help="where to write the table (JSON)"),
    target: str = typer.Option("onnxruntime", "--target", "--backend", "-b", help="a backend that builds tables"),
    space: str = typer.Option("mnasnet", "--space", "-s", help="mnasnet | mnasnet_cifar | a YAML/JSON space file"),
    threads: int = _THREADS,
    resolution: int | None = typer.Option(None, "--resolution", "-r", help="default: the space's"),
    num_classes: int = typer.Option(1000, "--num-classes"),
    calibration: int = typer.Option(64, "--calibration", help="whole models measured to fit the calibration"),
    pack_size: int | None = typer.Option(None, "--pack-size", help="layers per exported model (default: the backend's)"),
    processes: int = _PROCESSES,
    reference: str = typer.Option(DEFAULT_REFERENCE, "--reference", help="network the units are timed against"),
    force: bool = typer.Option(False, "--force", help="overwrite an existing table at --out"),
    force_threads: bool = _FORCE_THREADS,
) -> None:
    """Measure every layer configuration of a space (resumable; progress and ETA shown)."""
    check_tables(target)
    check_sizes(processes, pack_size, calibration)
    if _reference(reference) is None:
        raise UserError("a latency table is built against a reference network; --reference none is not possible")
    check_output(out, force)
    sp = SearchSpace.load(space)
    tgt = _target(target, threads, _resolution(resolution, sp.resolution), force_threads, num_classes=num_classes)

    def what_is_kept() -> str:
        partial = partial_path(out)
        kept = f"the packs measured before are kept in {partial}" if partial.is_file() else "no pack was finished"
        return f"{kept}; free some space and run the same command again: it goes on where it stopped"

    with keeps(what_is_kept):
        tab = build_lut(sp, tgt, out, processes=processes, calibration=calibration, pack_size=pack_size,
                        reference=reference, force=force, protocol=Protocol(force_threads=force_threads))
    b, c = tab.build, tab.calibration
    fit = (f"calibration on {c['samples']} models, fit MAPE {c['fit_mape']:.1f}%" if c.get("samples")
           and math.isfinite(c.get("fit_mape", math.nan)) else "no calibration (--calibration 0)")
    typer.echo(f"wrote {out}: {b['units']} entries for {tgt.label} in {b['seconds']:.0f} s "
               f"(layers {b['layer_seconds']:.0f} s); {fit}")
    if tab.reference is not None:
        typer.echo(f"  relative to {_reference_line(tab.reference)}")


@app.command("refine-lut")
def refine_lut_cmd(
    lut: Path = typer.Argument(..., help="a table written by build-lut (updated in place)"),
    processes: int = typer.Option(6, "--processes", "-p", help="per-process figures every layer should have"),
    pack_size: int | None = typer.Option(None, "--pack-size", help="layers per exported model (default: the backend's)"),
) -> None:
    """Time the table's layers in more processes (in new packs), pool them and refit the
    calibration: a sharper table for more build time (resumable: saved after every pack)."""
    check_sizes(processes, pack_size)
    if lut.is_file() and not os.access(lut, os.W_OK):
        raise UserError(f"cannot write {lut}: the table is updated in place; make it writable or refine a copy")
    if lut.is_file() and not os.access(lut.parent, os.W_OK | os.X_OK):
        raise UserError(f"cannot refine {lut}: its folder {lut.parent} is not writable (the table is saved beside "
                        "itself and renamed over it); make the folder writable or refine a copy elsewhere")
    with keeps(f"{lut} keeps every pack refined so far; free some space and run the same command again"):
        tab = refine_lut(lut, processes, pack_size=pack_size)
    run, c = tab.build["refined"][-1], tab.calibration
    typer.echo(f"refined {lut}: {run['units']} layers timed in more processes ({run['packs']} packs, "
               f"{run['seconds']:.0f} s); calibration {c.get('model', '?')!r}, leave-one-out "
               f"{c.get('loo_mape', float('nan')):.2f}% on {c.get('samples', 0)} models")


@app.command("validate-lut")
def validate_lut_cmd(
    lut: Path = typer.Argument(..., help="a table written by build-lut"),
    samples: int = typer.Option(100, "--samples", "-n"),
    processes: int = _PROCESSES,
    seed: int = typer.Option(777, "--seed"),
    fresh: bool = typer.Option(False, "--fresh", help="measure the architectures again (an independent ground truth)"),
    plot: Path | None = typer.Option(None, "--plot", help="scatter plot (default: next to the table)"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Measure random architectures for real (against the table's reference) and compare with the
    table's predictions."""
    _processes(processes)
    _count(samples, "--samples", 2)
    tab = LatencyTable.load(lut)
    plot = output_file(plot or lut.with_suffix(".validation.png"), "--plot", force=True, inputs=[lut])
    covered, total = tab.coverage()
    if covered < total:
        typer.echo(f"warning: the table holds {covered} of the {total} layer configurations of its space; "
                   "architectures with missing layers are predicted by a MACs regression", err=True)
    with terminate_as_exit():
        v = validate_lut(tab, samples, seed=seed, processes=processes, fresh=fresh)
    scatter(v, plot, title=f"LUT {tab.target.label}")
    if as_json:
        typer.echo(json.dumps(v.to_dict(), indent=2))
        return
    verdict = "meets" if v.meets_bar else "misses"
    typer.echo(f"{v.n} architectures on {tab.target.label}: MAPE {v.mape:.2f}%  RMSE {v.rmse_ms:.3f} ms  "
               f"Kendall tau {v.kendall_tau:.3f}  within 5% {v.within_5:.0f}%  within 10% {v.within_10:.0f}%  "
               f"predict {v.predict_us:.0f} us/arch; {verdict} the bar (MAPE<=3%, tau>=0.95, 100% within 10%)")
    if v.skipped:
        typer.echo(f"  {v.skipped} architectures left out: no finite positive measurement or prediction", err=True)
    if v.regressed_archs:
        typer.echo(f"  {v.regressed_archs} of {v.n} architectures had layers missing from the table", err=True)
    typer.echo(f"scatter plot: {plot}")


@app.command()
def targets(as_json: bool = typer.Option(False, "--json")) -> None:
    """What this machine can measure, with runtime versions."""
    import torch  # lazy: only this command reports the GPU

    rows = []
    for name in backend_names():
        be = get_backend(name)
        reason = be.unavailable()
        rows.append({"backend": name, "available": reason is None, "version": be.describe(),
                     "note": reason or be.note()})
    gpu = torch.cuda.is_available()
    rows.append({"backend": "torch (cuda)", "available": gpu, "version": f"torch {torch.__version__}",
                 "note": torch.cuda.get_device_name(0) if gpu else "no GPU visible"})
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        mark = "yes" if r["available"] else "no "
        typer.echo(f"{r['backend']:<14} {mark}  {r['version']:<32} {r['note']}")
