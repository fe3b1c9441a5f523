"""LiteRT (TFLite) with XNNPACK: the paper's runtime family; the same .tflite runs on a phone.

A table pack is converted ONCE, as one signature holding K independent units (litert-torch's
conversion costs ~1.1 s of CPU per unit that way, against 3-5 s per unit when every unit is its
own signature: each signature is exported, decomposed and lowered on its own), and the converted
flatbuffer is then split into one subgraph + signature per unit (the official schema's object
API), so each unit runs, and is timed, on its own. XNNPACK delegates every subgraph; a unit
timed in a split pack takes what the same unit converted alone takes.

Imports of the runtime, numpy and torch sit inside the methods on purpose: the registry imports
every backend module, and a measuring process loads only the runtime it measures.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mnas.errors import UserError
from mnas.latency.backends.base import Backend, Runner, dist_version, timed_parts
from mnas.latency.tables.units import Unit
from mnas.latency.target import Target

if TYPE_CHECKING:
    from torch import nn


class LiteRTBackend(Backend):
    name = "litert"
    suffix = ".tflite"
    parallel_export = True
    default_pack_size = 96  # a conversion costs ~12 s + ~1 s per unit (16/48/96 units: 28/60/106 CPU s)
    tables = True

    def version(self, target: Target) -> str:
        return dist_version("ai-edge-litert")

    def unavailable(self) -> str | None:
        try:  # lazy: are the optional runtime and converter installed?
            import ai_edge_litert.interpreter  # noqa: F401
            import litert_torch  # noqa: F401
        except ImportError:
            return "ai-edge-litert / litert-torch not installed; `pip install 'mnas[litert]'`"
        return None

    def export(self, module: nn.Module, path: Path, target: Target) -> Path:
        from mnas.export import to_tflite  # lazy: torch is only needed where models are exported

        return to_tflite(module, path, target.resolution, target.batch)

    def load(self, path: Path, target: Target) -> Runner:
        import numpy as np
        from ai_edge_litert.interpreter import Interpreter

        interp = Interpreter(model_path=str(path), num_threads=target.threads)
        interp.allocate_tensors()
        detail = interp.get_input_details()[0]
        interp.set_tensor(detail["index"], np.random.rand(*detail["shape"]).astype(detail["dtype"]))
        return Runner(interp.invoke)

    def export_pack(self, units: Sequence[Unit], path: Path, target: Target) -> Path:
        import torch

        from mnas.export import quiet_converters
        from mnas.latency.tables.packs import pack_module

        try:
            import litert_torch
        except ImportError as exc:
            raise UserError("litert-torch is not installed; `pip install 'mnas[litert]'`") from exc
        pack, xs = pack_module(units)
        path.parent.mkdir(parents=True, exist_ok=True)
        whole = path.with_name(path.stem + ".whole.tflite")
        with quiet_converters(), torch.no_grad():
            litert_torch.convert(pack, xs).export(str(whole))
        split_signatures(whole, path, len(units))
        whole.unlink()
        return path

    def load_pack(self, path: Path, target: Target, count: int) -> Runner:
        import numpy as np
        from ai_edge_litert.interpreter import Interpreter

        interp = Interpreter(model_path=str(path), num_threads=target.threads)
        runners = []
        for i in range(count):
            sig = interp.get_signature_runner(f"u{i}")
            ((name, detail),) = sig.get_input_details().items()
            feed = {name: np.random.rand(*detail["shape"]).astype(np.float32)}
            runners.append(_signature_runner(sig, feed))
        return timed_parts(runners)


def _signature_runner(sig: Any, feed: dict[str, Any]) -> Runner:
    return Runner(lambda: sig(**feed))


_ARG = re.compile(r"args_(\d+)$")


def split_signatures(src: Path, dst: Path, count: int) -> Path:
    """Rewrite a one-subgraph model of `count` independent units (signature inputs `args_<i>`)
    as `count` subgraphs with signatures `u<i>`, sharing the constant buffers."""
    from ai_edge_litert import schema_py_generated as schema  # lazy: the runtime's own schema
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model(src)
    if len(model.subgraphs) != 1 or len(model.signatureDefs) != 1:
        raise UserError(f"{src} is not a one-signature pack")
    graph, sig = model.subgraphs[0], model.signatureDefs[0]
    unit_of_input: dict[int, int] = {}
    for tm in sig.inputs:
        m = _ARG.match(tm.name.decode() if isinstance(tm.name, bytes) else tm.name)
        if m is None:
            raise UserError(f"unexpected input {tm.name!r} in pack {src}")
        unit_of_input[tm.tensorIndex] = int(m.group(1))
    owner = dict(unit_of_input)  # tensor -> unit, spread along the data flow
    op_unit = []
    for op in graph.operators:
        found = {owner[t] for t in op.inputs if t in owner}
        if len(found) != 1:
            raise UserError(f"pack {src}: an operator reads {len(found)} units' tensors; cannot split")
        u = found.pop()
        op_unit.append(u)
        for t in op.outputs:
            owner[t] = u
    subgraphs: list[Any] = [None] * count
    signatures: list[Any] = [None] * count
    for tensor, u in unit_of_input.items():
        ops = [op for op, ou in zip(graph.operators, op_unit, strict=True) if ou == u]
        outputs = [t for t in graph.outputs if owner.get(t) == u]
        used = sorted({t for op in ops for t in [*op.inputs, *op.outputs] if t >= 0} | {tensor} | set(outputs))
        index = {t: i for i, t in enumerate(used)}
        sub = schema.SubGraphT()
        sub.tensors = [graph.tensors[t] for t in used]
        sub.inputs, sub.outputs = [index[tensor]], [index[t] for t in outputs]
        sub.operators = []
        for op in ops:
            new = copy.copy(op)
            new.inputs = [index[t] if t >= 0 else t for t in op.inputs]
            new.outputs = [index[t] for t in op.outputs]
            sub.operators.append(new)
        sub.name = f"u{u}"
        sd = schema.SignatureDefT()
        sd.signatureKey, sd.subgraphIndex = f"u{u}", u
        sd.inputs = [_tensor_map(schema, "x", index[tensor])]
        sd.outputs = [_tensor_map(schema, f"y{j}", index[t]) for j, t in enumerate(outputs)]
        subgraphs[u], signatures[u] = sub, sd
    if any(s is None for s in subgraphs):
        raise UserError(f"pack {src} holds {len(unit_of_input)} units, expected {count}")
    model.subgraphs, model.signatureDefs = subgraphs, signatures
    flatbuffer_utils.write_model(model, dst)
    return dst


def _tensor_map(schema: Any, name: str, index: int) -> Any:
    tm = schema.TensorMapT()
    tm.name, tm.tensorIndex = name, index
    return tm


BACKEND = LiteRTBackend()
