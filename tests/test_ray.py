"""The Ray executor on a real local Ray cluster (2 CPUs): trials run as Ray tasks, a worker process
that dies mid-trial is retried once and then the trial is stored as failed while the search goes
on, and latency measurements never overlap each other or training on the node.

Worker deaths are real: the training part of chosen trials calls os._exit inside the Ray worker.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from pathlib import Path

import pytest
import ray
from ray import cloudpickle

from mnas.errors import UserError
from mnas.search.config import load_config
from mnas.search.evaluation import latency_parts
from mnas.search.loop import start_search
from mnas.search.ray_executor import RayExecutor, default_train, device_resource, merge_latency
from mnas.search.store import Store, load_state
from test_search import write_config

pytestmark = pytest.mark.slow  # every test here trains, measures or searches

# The part functions below must travel to Ray workers, which cannot import this test module.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory, data_root):
    env = {"MNAS_DATA": str(data_root), "MNAS_CACHE_DIR": str(tmp_path_factory.mktemp("ray-cache"))}
    # this node stands for two device hosts: its own and a second one named "phone-host"
    ray.init(num_cpus=2, include_dashboard=False, resources={**device_resource(), **device_resource("phone-host")},
             log_to_driver=False, runtime_env={"env_vars": env})
    yield
    ray.shutdown()


def _record(marks: str, kind: str, trial_id: int, fn):
    start = time.time()
    result = fn()
    span = {"kind": kind, "trial": trial_id, "start": start, "end": time.time(), "pid": os.getpid()}
    (Path(marks) / f"span-{kind}-{trial_id}.json").write_text(json.dumps(span))
    return result


def timed_latency(marks: str, trial_id, arch, config):
    return _record(marks, "latency", trial_id, lambda: latency_parts([arch], config)[0])


def placed_latency(marks: str, trial_id, arch, config):
    """Latency as usual, noting which device resource the task held and which targets it timed."""
    held = sorted(k for k in ray.get_runtime_context().get_assigned_resources() if k.startswith("latency_device:"))
    labels = [t.label for t in config.latency]
    (Path(marks) / f"placed-{trial_id}-{'+'.join(labels)}.json").write_text(json.dumps(held))
    return latency_parts([arch], config)[0]


def crashing_train(marks: str, crash_always: int, crash_once: int, trial_id, arch, config, rung, seed, state):
    """Kill the worker process: always for one trial, on its first attempt for another."""
    attempt = len(list(Path(marks).glob(f"attempt-{trial_id}-*")))
    (Path(marks) / f"attempt-{trial_id}-{attempt}").write_text(str(os.getpid()))
    if trial_id == crash_always or (trial_id == crash_once and attempt == 0):
        os._exit(1)
    return _record(marks, "train", trial_id, lambda: default_train(trial_id, arch, config, rung, seed, state))


def test_trials_run_as_ray_tasks_and_survive_dead_workers(tmp_path, ray_cluster):
    marks = tmp_path / "marks"
    marks.mkdir()
    config = load_config(write_config(tmp_path, executor={"name": "ray", "cpus_per_trial": 1},
                                      budget={"trials": 6, "batch_size": 3}))
    executor = RayExecutor(config, latency_fn=functools.partial(timed_latency, str(marks)),
                           train_fn=functools.partial(crashing_train, str(marks), 0, 1))
    outcome = start_search(config, tmp_path / "run", executor=executor, show_progress=False)

    with Store.open(tmp_path / "run") as store:
        trials = store.trials()
        state = load_state(store.checkpoint().state)
    assert len(trials) == 6 and outcome.counts == {"pending": 0, "running": 0, "done": 5, "failed": 1}
    dead = trials[0]
    assert dead.status == "failed" and "worker died (retried 1x)" in dead.error and dead.reward is None
    assert dead.latency_ms is not None  # its latency task was fine; the training worker died
    assert len(list(marks.glob("attempt-0-*"))) == 2  # first try + one retry, then given up
    assert trials[1].status == "done" and len(list(marks.glob("attempt-1-*"))) == 2
    assert all(t.status == "done" for t in trials[1:])
    assert all(not t.worker.endswith(f":{os.getpid()}") for t in trials[1:])  # a Ray worker's host:pid
    assert [t.step for t in trials] == [0, 0, 0, 1, 1, 1] and state["told"] == 6  # the search went on

    # Trials ran in Ray worker processes, not in this one.
    spans = [json.loads(p.read_text()) for p in marks.glob("span-*.json")]
    assert {s["pid"] for s in spans}.isdisjoint({os.getpid()})
    # Latency measurements own the node: no overlap with each other or with any training.
    latency = [s for s in spans if s["kind"] == "latency"]
    assert len(latency) == 6
    for a in latency:
        for b in spans:
            if b is not a:
                assert a["end"] <= b["start"] or b["end"] <= a["start"], (a, b)


def test_missing_device_resource_is_a_user_error(tmp_path, ray_cluster):
    config = load_config(write_config(tmp_path, executor="ray", latency={"host": "no-such-host"}))
    with pytest.raises(UserError, match="no Ray node offers resource 'latency_device:no-such-host'"):
        RayExecutor(config)


def test_each_target_is_measured_on_its_own_host(tmp_path, ray_cluster):
    """Two measured targets on two hosts: one latency task per host, holding that host's device;
    the trial stores both figures and the first target's drives the reward."""
    marks = tmp_path / "marks"
    marks.mkdir()
    here = next(iter(device_resource()))
    targets = [{"backend": "onnxruntime", "threads": 1, "processes": 1, "name": "cpu"},
               {"backend": "onnxruntime", "threads": 1, "processes": 1, "name": "phone", "host": "phone-host"}]
    config = load_config(write_config(tmp_path, executor={"name": "ray", "cpus_per_trial": 1}, latency=targets,
                                      budget={"trials": 2, "batch_size": 2}))
    executor = RayExecutor(config, latency_fn=functools.partial(placed_latency, str(marks)))
    start_search(config, tmp_path / "run", executor=executor, show_progress=False)

    with Store.open(tmp_path / "run") as store:
        trials = store.trials()
    assert [t.status for t in trials] == ["done", "done"]
    for t in trials:
        assert json.loads((marks / f"placed-{t.trial_id}-cpu.json").read_text()) == [here]
        assert json.loads((marks / f"placed-{t.trial_id}-phone.json").read_text()) == ["latency_device:phone-host"]
        assert set(t.latencies) == {"cpu", "phone"} and t.latency_ms == t.latencies["cpu"]
    assert len(list(marks.glob("placed-*"))) == 4  # nothing else was timed


def test_a_second_host_without_its_device_is_a_user_error(tmp_path, ray_cluster):
    targets = [{"backend": "onnxruntime", "name": "cpu"}, {"backend": "onnxruntime", "name": "far", "host": "far-host"}]
    config = load_config(write_config(tmp_path, executor="ray", latency=targets))
    with pytest.raises(UserError, match="no Ray node offers resource 'latency_device:far-host' .*target far"):
        RayExecutor(config)


def test_latency_parts_merge_in_the_configs_order_and_fail_together():
    here = {"error": None, "seconds": 1.0, "worker": "a", "latencies": {"cpu": 2.0}, "latency_ms": 2.0, "relative": 0.5}
    there = {"error": None, "seconds": 3.0, "worker": "b", "latencies": {"phone": 9.0}, "latency_ms": 9.0, "relative": 1.5}
    merged = merge_latency([there, here], ["cpu", "phone"])
    assert list(merged["latencies"].items()) == [("cpu", 2.0), ("phone", 9.0)]
    assert (merged["latency_ms"], merged["relative"], merged["seconds"], merged["error"]) == (2.0, 0.5, 4.0, None)
    broken = {**there, "error": "latency: worker died", "latencies": None, "latency_ms": None, "relative": None}
    failed = merge_latency([here, broken], ["cpu", "phone"])
    assert failed["error"] == "latency: worker died" and failed["latencies"] is None and failed["latency_ms"] is None


def test_rungs_run_as_ray_tasks_and_continue_from_their_state(tmp_path, ray_cluster):
    """Successive halving on Ray: each rung a task, promoted candidates continuing from the state
    their previous rung left, every decision stored as Optuna's pruner takes it."""
    from mnas.search.rungs import RungScheduler

    config = load_config(write_config(tmp_path, executor={"name": "ray", "cpus_per_trial": 1},
                                      proxy={"steps": [2, 4, 6], "keep": 0.5, "max_steps": None, "batch_size": 25},
                                      budget={"trials": 4, "batch_size": 4}))
    outcome = start_search(config, tmp_path / "run", show_progress=False)
    with Store.open(tmp_path / "run") as store:
        trials, records = store.trials(), store.rungs()
    assert outcome.counts["done"] == 4 and all(not t.worker.endswith(f":{os.getpid()}") for t in trials)
    assert {t.rung for t in trials} >= {0, 2} and len(records) > len(trials)
    fresh = RungScheduler([2, 4, 6], 0.5)
    assert all(fresh.decide(r.trial_id, r.rung, r.reward) == r.promoted for r in records)
    assert not any((tmp_path / "run" / "rung_states").glob("*.pt"))
