"""Many table units per exported model, so building a table pays one conversion per pack.

A pack is one model holding K independent units, each with its own input and output.
- onnxruntime: one .onnx; every node is timed by ORT's per-node profiler and attributed to its
  unit by the node name (`/units.<i>/...`). Layout reorders that ORT inserts only because a unit
  starts or ends the pack (they do not occur between layers of a real network) are left out;
  reorders inside a unit (e.g. around SE) are counted.
- litert: one .tflite with K signatures (litert-torch multi-signature conversion); each
  signature is timed on its own with the protocol.
- torch: the pickled units, each timed on its own with the protocol.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from mnas.errors import UserError
from mnas.latency.protocol import Protocol, time_runner
from mnas.latency.result import ProcessSample
from mnas.latency.target import Target

if TYPE_CHECKING:
    from mnas.latency.units import Unit

PACK_BACKENDS = ("onnxruntime", "litert", "torch")
SUFFIX = {"onnxruntime": ".onnx", "litert": ".tflite", "torch": ".pt"}


def export_pack(units: Sequence["Unit"], target: Target, path: Path) -> Path:
    """Write one model holding every unit (see the module docstring per backend)."""
    import torch
    from torch import nn

    from mnas.export import quiet_converters
    from mnas.latency.units import build_unit, unit_input_shape

    if target.backend not in PACK_BACKENDS:
        raise UserError(f"latency tables can be built for {', '.join(PACK_BACKENDS)}; "
                        f"not for {target.backend}")
    modules = [build_unit(u) for u in units]
    xs = tuple(torch.randn(*unit_input_shape(u)) for u in units)
    path.parent.mkdir(parents=True, exist_ok=True)
    if target.backend == "torch":  # the units as data; the worker rebuilds them (no pickled modules)
        from mnas.latency.units import unit_to_dict

        torch.save({"units": [unit_to_dict(u) for u in units]}, path)
        return path
    if target.backend == "onnxruntime":
        pack = _Pack(modules).eval()
        with quiet_converters(), torch.no_grad():
            torch.onnx.export(pack, xs, str(path), dynamo=False, opset_version=17,
                              input_names=[f"x{i}" for i in range(len(units))],
                              output_names=[f"y{i}" for i in range(len(units))])
        return path
    try:
        import litert_torch
    except ImportError as exc:
        raise UserError("litert-torch is not installed; `pip install 'mnas[litert]'`") from exc
    with quiet_converters(), torch.no_grad():
        conv = None
        for i, (m, x) in enumerate(zip(modules, xs)):
            conv = (litert_torch if conv is None else conv).signature(f"u{i}", m, (x,))
        conv.convert().export(str(path))
    return path


class _Pack:  # built lazily so importing this module does not import torch
    def __new__(cls, modules):
        from torch import nn

        class Pack(nn.Module):
            def __init__(self, mods):
                super().__init__()
                self.units = nn.ModuleList(mods)

            def forward(self, *xs):
                return tuple(m(x) for m, x in zip(self.units, xs))

        return Pack(modules)


# ---- inside a measuring process -----------------------------------------------------------------
def time_pack(path: Path, target: Target, protocol: Protocol, count: int) -> list[ProcessSample]:
    """One ProcessSample per unit, in pack order."""
    if target.backend == "onnxruntime":
        return _time_ort_pack(path, target, protocol, count)
    runners = _litert_runners(path, target, count) if target.backend == "litert" else _torch_runners(path, target)
    samples = []
    for i, runner in enumerate(runners):
        # the process is warm after the first unit's 0.5 s; every unit still gets >= 30 warm-ups
        p = protocol if i == 0 else Protocol(**{**protocol.__dict__, "warmup_s": 0.0})
        samples.append(time_runner(runner, p))
    return samples


def _litert_runners(path: Path, target: Target, count: int):
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    from mnas.latency.backends.base import Runner

    interp = Interpreter(model_path=str(path), num_threads=target.threads)
    runners = []
    for i in range(count):
        sig = interp.get_signature_runner(f"u{i}")
        (name, detail), = sig.get_input_details().items()
        feed = {name: np.random.rand(*detail["shape"]).astype(np.float32)}
        runners.append(Runner(lambda sig=sig, feed=feed: sig(**feed)))
    return runners


def _torch_runners(path: Path, target: Target):
    import torch

    from mnas.latency.backends.base import Runner
    from mnas.latency.units import build_unit, unit_from_dict, unit_input_shape
    from mnas.safe_load import load_tensors

    torch.set_num_threads(target.threads)
    saved = load_tensors(path, f"latency pack {path}")
    runners = []
    for d in saved["units"]:
        unit = unit_from_dict(d)
        x = torch.randn(*unit_input_shape(unit))

        def run(m=build_unit(unit).eval(), x=x):
            with torch.inference_mode():
                m(x)

        runners.append(Runner(run))
    return runners


_UNIT = re.compile(r"^/units\.(\d+)/|^y(\d+)(?:_|$)")  # ORT renames a unit's last node after its output


def _named_unit(name: str) -> int | None:
    m = _UNIT.match(name)
    return int(m.group(1) or m.group(2)) if m else None


def node_units(optimized: Path) -> dict[str, int | None]:
    """Unit of every node of ORT's optimized graph. Nodes ORT added (layout reorders) belong to
    a unit when all their neighbours do; those touching a pack input or output are artefacts of
    the pack (a real network has no reorder between two NCHWc layers) and map to None."""
    import onnx

    g = onnx.load(str(optimized), load_external_data=False).graph
    producer = {o: n.name for n in g.node for o in n.output}
    consumers: dict[str, list[str]] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n.name)
    graph_io = {i.name for i in g.input} | {o.name for o in g.output}
    unit: dict[str, int | None] = {n.name: _named_unit(n.name) for n in g.node}
    boundary = {n.name for n in g.node if unit[n.name] is None and (set(n.input) | set(n.output)) & graph_io}
    for _ in range(len(g.node)):
        changed = False
        for n in g.node:
            if unit[n.name] is not None or n.name in boundary:
                continue
            near = [producer[i] for i in n.input if i in producer]
            near += [c for o in n.output for c in consumers.get(o, [])]
            if any(x in boundary for x in near):
                boundary.add(n.name)
                changed = True
                continue
            known = {unit[x] for x in near if unit[x] is not None}
            if len(known) == 1:
                unit[n.name] = known.pop()
                changed = True
        if not changed:
            break
    return unit


def _time_ort_pack(path: Path, target: Target, protocol: Protocol, count: int) -> list[ProcessSample]:
    import numpy as np
    import onnxruntime as ort

    from mnas.latency.backends.ort import session_options

    with tempfile.TemporaryDirectory(prefix="mnas-prof-") as tmp:
        so = session_options(target.threads)
        so.enable_profiling = True
        so.profile_file_prefix = os.path.join(tmp, "prof")
        so.optimized_model_filepath = os.path.join(tmp, "optimized.onnx")
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        owner = node_units(Path(so.optimized_model_filepath))
        feed = {i.name: np.random.rand(*i.shape).astype(np.float32) for i in sess.get_inputs()}
        t_end = time.perf_counter() + protocol.warmup_s
        warm = 0
        while warm < protocol.warmup_iters or time.perf_counter() < t_end:
            sess.run(None, feed)
            warm += 1
        flags: list[bool] = []
        for _attempt in range(protocol.retries + 1):  # more runs until >= iters clean ones
            for _ in range(protocol.iters):
                w0, c0 = time.perf_counter_ns(), time.process_time_ns()
                sess.run(None, feed)
                w1, c1 = time.perf_counter_ns(), time.process_time_ns()
                flags.append((c1 - c0) / max(w1 - w0, 1) < protocol.preempt_ratio)
            if sum(flags) / len(flags) <= protocol.max_flagged or flags.count(False) >= protocol.iters:
                break
        events = json.loads(Path(sess.end_profiling()).read_text())
    per_run = _unit_times_per_run(events, count, owner)[warm:]
    if len(per_run) != len(flags):
        raise UserError(f"ORT profile has {len(per_run)} timed runs, expected {len(flags)}")
    clean = [r for r, f in zip(per_run, flags) if not f]
    use = clean if len(clean) >= protocol.iters // 2 else per_run  # as in protocol.time_runner
    frac = sum(flags) / len(flags)
    samples = [ProcessSample.from_times([run[u] for run in use], frac) for u in range(count)]
    for s in samples:
        s.runs = len(flags)
    return samples


def _unit_times_per_run(events: list[dict], count: int, owner: dict[str, int | None]) -> list[list[float]]:
    """Per run, the ms spent in each unit's nodes (profiler durations are whole microseconds)."""
    runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in events
                  if e.get("cat") == "Session" and e.get("name") == "SequentialExecutor::Execute")
    nodes = sorted((e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")),
                   key=lambda e: e["ts"])
    out: list[list[float]] = []
    k = 0
    for start, end in runs:
        times = [0.0] * count
        while k < len(nodes) and nodes[k]["ts"] < start:
            k += 1
        while k < len(nodes) and nodes[k]["ts"] <= end:
            name = nodes[k]["name"][: -len("_kernel_time")]
            unit = owner.get(name, _named_unit(name))
            if unit is not None and unit < count:
                times[unit] += nodes[k]["dur"] / 1e3
            k += 1
        out.append(times)
    return out
