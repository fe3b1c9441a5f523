"""One measuring process: `python -m mnas.latency.worker JOB.json RESULT.json`.

Imports only the runtime it measures (no torch for litert / onnxruntime), pins itself, loads the
model file, runs the protocol and writes a ProcessSample as JSON.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    from mnas.latency.backends import get_backend
    from mnas.latency.protocol import Protocol, pin, time_runner
    from mnas.latency.target import Target

    job = json.loads(Path(argv[0]).read_text())
    target = Target.from_dict(job["target"])
    pin(job.get("cpus") or [])
    protocol = Protocol(**job["protocol"])
    if job.get("pack"):  # a latency-table pack: one sample per unit
        from mnas.latency.packs import time_pack

        samples = time_pack(Path(job["path"]), target, protocol, int(job["pack"]))
        Path(argv[1]).write_text(json.dumps([s.to_dict() for s in samples]))
        return 0
    runner = get_backend(target.backend).load(Path(job["path"]), target)
    sample = time_runner(runner, protocol)
    Path(argv[1]).write_text(json.dumps(sample.to_dict()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
