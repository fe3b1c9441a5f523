"""The real CLI in a fresh process, and the checks every bad-input test makes of it: one line on
stderr, the exit code, no traceback, nothing changed on disk. Shared by the tests that run
`python -m mnas` as a user would."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import torch

from mnas import zoo
from mnas.model import build_model
from mnas.search.store import Store, dump_state
from mnas.search.trial import Trial
from mnas.space import SearchSpace


def mnas(*args: str | Path, timeout: float = 300, limit_file_bytes: int | None = None,
         cwd: Path | None = None) -> subprocess.CompletedProcess:
    """`python -m mnas ARGS`; `limit_file_bytes`: a "full disk" (writes past this size fail with
    EFBIG; Python ignores SIGXFSZ)."""
    def limit() -> None:
        if limit_file_bytes is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit_file_bytes, limit_file_bytes))

    env = {**os.environ, "OMP_NUM_THREADS": "1", "MNAS_DEBUG": ""}
    return subprocess.run([sys.executable, "-m", "mnas", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=cwd, preexec_fn=limit if limit_file_bytes is not None else None)


def one_line(r: subprocess.CompletedProcess, code: int = 2) -> str:
    """The one `error: ...` line a refused command prints (with `code`, and no traceback)."""
    assert r.returncode == code, (r.returncode, r.stdout[-500:], r.stderr[-2000:])
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    return lines[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file below `folder` with its bytes (a link as where it points): proves nothing changed."""
    out: dict[str, bytes] = {}
    for p in sorted(folder.rglob("*")):
        if p.is_symlink():
            out[str(p.relative_to(folder))] = b"-> " + os.readlink(p).encode()
        elif p.is_file():
            out[str(p.relative_to(folder))] = p.read_bytes()
    return out


def trained_run(folder: Path) -> Path:
    """A run folder with a real checkpoint (what `mnas train` writes, minus the optimiser state)."""
    arch = zoo.get("mnasnet_small").for_resolution(32)
    folder.mkdir(parents=True)
    torch.save({"arch": arch.to_dict(), "num_classes": 10, "resolution": 32,
                "model": build_model(arch, num_classes=10).state_dict()}, folder / "checkpoint.pt")
    (folder / "metrics.jsonl").write_text('{"epoch": 1}\n')
    return folder


SEARCH_CONFIG = {"space": "mnasnet_cifar", "reward": {"target_ms": 5.0, "preset": "hard"},
                 "data": {"dataset": "cifar10_subset"},
                 "latency": {"backend": "onnxruntime", "threads": 1, "resolution": 32, "num_classes": 10,
                             "processes": 1}}


def search_run(folder: Path, config: dict | None = None, trial_ids: tuple[int, ...] = (0, 1)) -> Path:
    """A search run written by hand into a real store: `trial_ids` done (made-up but plausible
    results), its strategy state a placeholder (reports read it; a resume would refuse it)."""
    space = SearchSpace.cifar()
    with Store.create(folder, config or SEARCH_CONFIG) as store:
        batch = [Trial(-1, space.sample(i), strategy="random", tokens=space.encode(space.sample(i))) for i in trial_ids]
        store.add_trials(batch, dump_state({}), 0)
        for t in batch:
            t.status, t.accuracy, t.latency_ms, t.reward, t.seconds = "done", 0.3 + t.trial_id / 10, 4.0, 0.3, 1.0
            store.save_result(t)
        store.commit_tell([t.trial_id for t in batch], dump_state({}), 0)
    return folder
