"""One measuring process: `python -m mnas.latency.measure.worker JOB.json RESULT.json`.

Dies with its parent, keeps its temporary files in the parent's job folder, imports only the
runtime it measures (no torch for litert / onnxruntime), pins itself, loads the files and the
reference, runs the shared timing routine (`session.time_session`) and writes, per file, one
ProcessSample per part as JSON.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from mnas.latency.backends.base import get_backend
from mnas.latency.backends.registry import register_backend
from mnas.latency.measure.lifetime import die_with_parent
from mnas.latency.measure.protocol import Protocol, pin
from mnas.latency.measure.session import time_session
from mnas.latency.target import Target


def main(argv: list[str]) -> int:
    job = json.loads(Path(argv[0]).read_text())
    die_with_parent(job.get("parent"))
    tempfile.tempdir = job.get("tmp") or None  # removed with the parent's job folder
    register_backend(job["backend"]["name"], job["backend"]["module"])
    target = Target.from_dict(job["target"])
    backend = get_backend(target.backend)
    pin(job.get("cpus") or [])
    protocol = Protocol(**job["protocol"])
    runners = [backend.load_pack(Path(f["path"]), target, f["parts"]) if f["parts"]
               else backend.load(Path(f["path"]), target) for f in job["files"]]
    reference = backend.load(Path(job["reference"]), target) if job.get("reference") else None
    samples = time_session(runners, protocol, reference)
    Path(argv[1]).write_text(json.dumps([[s.to_dict() for s in item] for item in samples]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
