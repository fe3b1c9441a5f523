"""ONNX Runtime, CPU provider, ORT_ENABLE_ALL (lower levels run 2.4x slower here).

A table pack is one .onnx holding K independent units; one `run` executes all of them and ORT's
per-node profiler attributes the time to units by node name (`/units.<i>/...`). Layout reorders
that ORT inserts only because a unit starts or ends the pack (they do not occur between layers of
a real network) are left out; reorders inside a unit (e.g. around SE) are counted.

Imports of the runtime, numpy and torch sit inside the methods on purpose: the registry imports
every backend module, and a measuring process loads only the runtime it measures.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mnas.latency.backends.base import Backend, Runner, dist_version
from mnas.latency.tables.units import Unit
from mnas.latency.target import Target

if TYPE_CHECKING:
    from torch import nn


def session_options(threads: int) -> Any:
    import onnxruntime as ort  # lazy: only measuring processes of this backend load the runtime

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    return so


class OrtBackend(Backend):
    name = "onnxruntime"
    suffix = ".onnx"
    default_pack_size = 64
    tables = True

    def version(self, target: Target) -> str:
        return dist_version("onnxruntime", "onnxruntime-gpu")

    def unavailable(self) -> str | None:
        try:
            import onnxruntime  # noqa: F401  (lazy: is the optional runtime installed?)
        except ImportError:
            return "onnxruntime not installed; `pip install onnxruntime`"
        return None

    def export(self, module: nn.Module, path: Path, target: Target) -> Path:
        from mnas.export import to_onnx  # lazy: torch is only needed where models are exported

        return to_onnx(module, path, target.resolution, target.batch)

    def load(self, path: Path, target: Target) -> Runner:
        import onnxruntime as ort

        sess = ort.InferenceSession(str(path), session_options(target.threads), providers=["CPUExecutionProvider"])
        inp = sess.get_inputs()[0]
        feed = {inp.name: np.random.rand(*inp.shape).astype(np.float32)}
        return Runner(lambda: sess.run(None, feed))

    def export_pack(self, units: Sequence[Unit], path: Path, target: Target) -> Path:
        import torch

        from mnas.export import quiet_converters
        from mnas.latency.tables.packs import pack_module

        pack, xs = pack_module(units)
        path.parent.mkdir(parents=True, exist_ok=True)
        with quiet_converters(), torch.no_grad():
            torch.onnx.export(pack, xs, str(path), dynamo=False, opset_version=17,
                              input_names=[f"x{i}" for i in range(len(units))],
                              output_names=[f"y{i}" for i in range(len(units))])
        return path

    def load_pack(self, path: Path, target: Target, count: int) -> Runner:
        import onnxruntime as ort

        tmp = tempfile.mkdtemp(prefix="mnas-prof-")  # inside the worker's folder, removed with it
        so = session_options(target.threads)
        so.enable_profiling = True
        so.profile_file_prefix = str(Path(tmp) / "prof")
        so.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        owner = node_units(Path(so.optimized_model_filepath))
        feed = {i.name: np.random.rand(*i.shape).astype(np.float32) for i in sess.get_inputs()}

        def part_times() -> list[list[float]]:
            events = json.loads(Path(sess.end_profiling()).read_text())
            return unit_times_per_run(events, count, owner)

        return Runner(lambda: sess.run(None, feed), parts=count, part_times=part_times)


_UNIT = re.compile(r"^/units\.(\d+)/|^y(\d+)(?:_|$)")  # ORT renames a unit's last node after its output


def _named_unit(name: str) -> int | None:
    m = _UNIT.match(name)
    return int(m.group(1) or m.group(2)) if m else None


def node_units(optimized: Path) -> dict[str, int | None]:
    """Unit of every node of ORT's optimized graph. Nodes ORT added (layout reorders) belong to
    a unit when all their neighbours do; those touching a pack input or output are artefacts of
    the pack (a real network has no reorder between two NCHWc layers) and map to None."""
    import onnx  # lazy: only pack-measuring processes read graphs

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


def unit_times_per_run(events: list[dict[str, Any]], count: int, owner: dict[str, int | None]) -> list[list[float]]:
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


BACKEND = OrtBackend()
