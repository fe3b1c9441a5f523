"""A search whose accuracy comes from a supernet (trained by the search itself when missing) and
whose latency is taken on two targets at once: every trial stores one latency per target, the
report draws one front per target, resume continues, and the supernet's bad inputs are one line.
Real CIFAR-10, a real (tiny) supernet, real ONNX Runtime and PyTorch latency."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import yaml

from mnas.cli.app import main
from mnas.search.config import load_config
from mnas.search.loop import resume_search, start_search
from mnas.search.store import Store
from test_search import TINY_SPACE, write_config

pytestmark = pytest.mark.slow  # trains a supernet and measures latency

TWO_TARGETS = [{"backend": "onnxruntime", "threads": 1, "processes": 1, "name": "ort"},
               {"backend": "torch", "threads": 1, "processes": 1, "name": "eager"}]
SUPERNET_PROXY = {"kind": "supernet", "path": "supernet", "train_if_missing": True, "epochs": 1, "batch_size": 50,
                  "bn_batches": 1, "score_images": 100}


def _config(folder: Path, **changes) -> Path:
    base = {"proxy": SUPERNET_PROXY, "latency": TWO_TARGETS, "budget": {"trials": 4, "batch_size": 2},
            "strategy": {"name": "random"}}
    base.update(changes)
    path = write_config(folder, **base)
    data = yaml.safe_load(path.read_text())
    data["proxy"] = {k: v for k, v in data["proxy"].items() if k not in ("max_steps", "threads")} | {"threads": 1}
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def searched(tmp_path_factory, data_root) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("supernet_search")
    cfg = _config(folder)
    outcome = start_search(load_config(cfg), folder / "run", show_progress=False)
    assert outcome.counts["done"] == 4, outcome
    return folder, cfg


def test_supernet_was_trained_and_scores_every_candidate(searched):
    folder, _ = searched
    assert (folder / "supernet" / "supernet.pt").is_file() and (folder / "supernet" / "checkpoint.pt").is_file()
    with Store.open(folder / "run") as store:
        trials = store.trials()
    assert len(trials) == 4 and all(t.status == "done" for t in trials)
    assert all(0.0 <= t.accuracy <= 1.0 for t in trials)


def test_every_trial_has_a_latency_per_target(searched):
    folder, _ = searched
    with Store.open(folder / "run") as store:
        trials = store.trials()
    for t in trials:
        assert set(t.latencies) == {"ort", "eager"}
        assert t.latency_ms == t.latencies["ort"] and t.latencies["eager"] > 0
        assert t.relative is not None and t.relative > 0  # relative to mobilenet_v2 in the same processes


def test_report_draws_one_front_per_target(searched, capsys):
    folder, _ = searched
    with pytest.raises(SystemExit) as exc:
        main(["report", str(folder / "run"), "--no-zoo"])  # zoo marks: test_report.py
    assert exc.value.code in (0, None)
    md = (folder / "run" / "report.md").read_text()
    assert "## Pareto front on ort" in md and "## Pareto front on eager" in md
    assert "supernet" in md and "relative to mobilenet_v2 =" in md


def test_resume_continues_with_the_same_supernet(searched):
    folder, cfg = searched
    data = yaml.safe_load(cfg.read_text())
    with sqlite3.connect(folder / "run" / "trials.sqlite") as db:
        stored = db.execute("SELECT value FROM meta WHERE key = 'config'").fetchone()[0]
    assert '"kind": "supernet"' in stored
    with sqlite3.connect(folder / "run" / "trials.sqlite") as db:  # a longer budget: two more trials
        db.execute("UPDATE meta SET value = replace(value, '\"trials\": 4', '\"trials\": 6') WHERE key = 'config'")
    outcome = resume_search(folder / "run", show_progress=False)
    assert outcome.counts["done"] == 6 and data["proxy"]["kind"] == "supernet"


def _one_line(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert exc.value.code == 2 and len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_a_supernet_of_another_space_is_refused(searched, tmp_path, capsys):
    folder, _ = searched
    other = dict(TINY_SPACE, head_filters=48)
    (tmp_path / "other.yaml").write_text(yaml.safe_dump(other))
    cfg = _config(tmp_path, space="other.yaml", proxy={**SUPERNET_PROXY, "path": str(folder / "supernet"),
                                                       "train_if_missing": False})
    line = _one_line(["search", "--config", str(cfg), "--out", str(tmp_path / "run")], capsys)
    assert "was trained for space 'tiny_cifar'" in line and "head_filters" in line
    assert not (tmp_path / "run").exists()


def test_a_missing_or_corrupt_supernet_is_one_line(tmp_path, capsys):
    cfg = _config(tmp_path, proxy={**SUPERNET_PROXY, "path": "nowhere", "train_if_missing": False})
    assert "supernet" in _one_line(["search", "--config", str(cfg), "--out", str(tmp_path / "run")], capsys)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "supernet.pt").write_bytes(b"\x80\x04 not a supernet")
    cfg = _config(tmp_path, proxy={**SUPERNET_PROXY, "path": "broken", "train_if_missing": False})
    line = _one_line(["search", "--config", str(cfg), "--out", str(tmp_path / "run2")], capsys)
    assert "not a readable torch file" in line or "not an mnas supernet" in line
