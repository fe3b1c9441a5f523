"""The search YAML: strict validation, one-line errors naming the key's path, exit 2 via the CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mnas.cli.app import main
from mnas.errors import UserError
from mnas.search.config import StrategyConfig, load_config, parse_config

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _write(tmp_path: Path, data: dict | str, name: str = "bad.yaml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("name", ["quick.yaml", "cifar10.yaml"])
def test_examples_are_valid(name):
    config = load_config(EXAMPLES / name)
    assert (config.reward.target_ms or 0) > 0 or config.reward.target
    assert config.budget.trials > 0


def test_examples_fit_their_purpose():
    quick, big = load_config(EXAMPLES / "quick.yaml"), load_config(EXAMPLES / "cifar10.yaml")
    assert Path(quick.space).name == "cifar_half.yaml" and quick.executor.name == "local"
    assert quick.primary.lut is None and quick.primary.resolution == 32  # real measurement
    assert quick.budget.trials >= 24 and quick.budget.max_seconds <= 900  # make run: >= 24 candidates, 15 min
    assert quick.proxy.steps == [30, 90, 240] and quick.proxy.workers == 2  # successive halving, 2 cores
    assert quick.references.models == ["mobilenet_v2", "mnasnet_a1"] and quick.references.seeds == 2
    headline = load_config(EXAMPLES / "headline.yaml")  # the make-run search, longer and fully timed
    assert headline.proxy == quick.proxy and headline.space == quick.space and headline.references == quick.references
    assert headline.budget.max_seconds <= 7200 and headline.primary.processes == 3  # at most 2 hours
    assert quick.reward.target_ms is None and quick.reward.target  # a multiple: holds on any machine
    assert big.executor.name == "ray" and big.primary.lut and big.budget.trials >= 100
    assert Path(big.primary.lut).is_absolute()  # resolved against the YAML's folder
    shared = load_config(EXAMPLES / "supernet.yaml")
    assert shared.proxy.kind == "supernet" and Path(shared.proxy.path).is_absolute()
    assert Path(shared.space).is_file() and [t.name for t in shared.latency] == ["ort", "eager"]
    assert shared.budget.trials >= 200
    winner = StrategyConfig().name  # the benchmark's winner (docs/benchmarks/search.md)
    assert quick.strategy.name == big.strategy.name == shared.strategy.name == winner


def test_bad_value_names_file_and_path(tmp_path):
    path = _write(tmp_path, {"reward": {"target_ms": -1}})
    with pytest.raises(UserError) as err:
        load_config(path)
    assert str(err.value) == f"{path}: reward.target_ms: Input should be greater than 0"


def test_unknown_key_lists_allowed_keys(tmp_path):
    path = _write(tmp_path, {"reward": {"target_ms": 2}, "proxy": {"epoch": 3}})
    with pytest.raises(UserError, match=r"proxy\.epoch: unknown key; allowed keys: steps, keep, workers, epochs"):
        load_config(path)
    path = _write(tmp_path, {"reward": {"target_ms": 2}, "rewrad": {}})
    with pytest.raises(UserError, match=r"rewrad: unknown key; allowed keys: space, seed, data"):
        load_config(path)


@pytest.mark.parametrize("data, where", [
    ({}, "reward: required key is missing"),
    ({"reward": {"target_ms": 2, "preset": "soft", "alpha": -0.1}}, "reward: give either a preset or alpha/beta"),
    ({"reward": {"target_ms": 2, "alpha": 0.5}}, "reward.alpha: Input should be less than or equal to 0"),
    ({"reward": {"target_ms": 2, "preset": "medium"}}, "reward.preset: Input should be 'soft' or 'hard'"),
    ({"reward": {"target_ms": 2}, "budget": {"trials": 0}}, "budget.trials: Input should be greater than 0"),
    ({"reward": {"target_ms": 2}, "data": {"val_size": 1.5}}, "data.val_size: a fraction must lie between 0 and 1"),
    ({"reward": {"target_ms": 2}, "executor": "slurm"}, "executor.name: Input should be 'local' or 'ray'"),
    ({"reward": {"target_ms": 2}, "strategy": {"name": "anneal"}}, "strategy.name: unknown strategy 'anneal'"),
    ({"reward": {"target_ms": "fast"}}, "reward.target_ms: 'fast' is text, not a number"),
    # the proxy's rungs (successive halving) and the reference networks
    ({"reward": {"target_ms": 2}, "proxy": {"steps": [90, 30]}}, "proxy.steps: rungs must increase: 30 comes after 90"),
    ({"reward": {"target_ms": 2}, "proxy": {"steps": [30, 30]}}, "proxy.steps: rungs must increase"),
    ({"reward": {"target_ms": 2}, "proxy": {"steps": [0, 30]}}, "proxy.steps: a rung of 0 steps trains nothing"),
    ({"reward": {"target_ms": 2}, "proxy": {"steps": 0}}, "proxy.steps: a rung of 0 steps trains nothing"),
    ({"reward": {"target_ms": 2}, "proxy": {"steps": []}}, "proxy.steps: give at least one rung"),
    ({"reward": {"target_ms": 2}, "proxy": {"steps": [30, 2_000_000]}}, "above the limit of 1000000"),
    ({"reward": {"target_ms": 2}, "proxy": {"steps": [30, 90], "max_steps": 60}},
     "the top rung of 90 steps is above the budget max_steps 60"),
    ({"reward": {"target_ms": 2}, "proxy": {"keep": 0}}, "proxy.keep: Input should be greater than 0"),
    ({"reward": {"target_ms": 2}, "proxy": {"keep": 1}}, "proxy.keep: Input should be less than 1"),
    ({"reward": {"target_ms": 2}, "proxy": {"keep": 1.5}}, "proxy.keep: Input should be less than 1"),
    ({"reward": {"target_ms": 2}, "proxy": {"keep": 0.4}}, "proxy.keep: keep 0.4 is not 1/n"),
    ({"reward": {"target_ms": 2}, "proxy": {"workers": 0}}, "proxy.workers: Input should be greater than 0"),
    ({"reward": {"target_ms": 2}, "references": {"models": ["resnet50"]}}, "unknown zoo model 'resnet50'"),
    ({"reward": {"target_ms": 2}, "references": {"models": ["mobilenet_v2", "mobilenet_v2"]}},
     "a reference is named twice"),
    ({"reward": {"target_ms": 2}, "references": {"seeds": 0}}, "references.seeds: Input should be greater than"),
])
def test_bad_configs(tmp_path, data, where):
    path = _write(tmp_path, data)
    with pytest.raises(UserError) as err:
        load_config(path)
    message = str(err.value)
    assert message.startswith(f"{path}: ") and where in message and "\n" not in message


def test_shorthands_defaults_and_relative_paths(tmp_path):
    (tmp_path / "spaces").mkdir()
    path = _write(tmp_path, {"reward": {"target_ms": 2}, "executor": "ray", "space": "spaces/s.yaml",
                             "latency": {"lut": "t.json"}, "data": {"val_size": 500.0}}, "ok.yaml")
    config = load_config(path)
    assert config.executor.name == "ray" and config.executor.max_retries == 1
    assert config.space == str(tmp_path / "spaces" / "s.yaml")
    assert config.primary.lut == str(tmp_path / "t.json")
    assert config.data.val_size == 500 and isinstance(config.data.val_size, int)
    assert parse_config({"reward": {"target_ms": 2}}).space == "mnasnet_cifar"  # names stay names


def test_yaml_syntax_error_names_the_line(tmp_path):
    path = _write(tmp_path, "reward:\n  target_ms: [1, 2\nseed: 0\n")
    with pytest.raises(UserError, match=r"bad\.yaml: YAML syntax error at line \d+"):
        load_config(path)
    with pytest.raises(UserError, match="must hold a mapping"):
        load_config(_write(tmp_path, "- 1\n- 2\n"))
    with pytest.raises(UserError, match="no such config file"):
        load_config(tmp_path / "missing.yaml")


def _cli(args: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


@pytest.mark.parametrize("args, expect", [
    (["search"], "give --config FILE.yaml"),
    (["search", "--resume", "nowhere"], "holds no search run"),
    (["report", "nowhere"], "holds no search run"),
    (["best", "nowhere"], "holds no search run"),
])
def test_cli_user_errors_exit_2(tmp_path, capsys, monkeypatch, args, expect):
    monkeypatch.chdir(tmp_path)
    code, _, err = _cli(args, capsys)
    assert code == 2 and expect in err and len(err.strip().splitlines()) == 1


def test_cli_bad_config_exit_2_one_line(tmp_path, capsys):
    path = _write(tmp_path, {"reward": {"target_ms": 0}})
    code, out, err = _cli(["search", "--config", str(path), "--out", str(tmp_path / "run")], capsys)
    assert code == 2 and out == ""
    assert err.strip() == f"error: {path}: reward.target_ms: Input should be greater than 0"
    assert not (tmp_path / "run").exists()  # nothing was started


def test_cli_bad_strategy_knob_exit_2(tmp_path, capsys):
    path = _write(tmp_path, {"reward": {"target_ms": 2}, "strategy": {"name": "evolution", "knobs": {"popsize": 3}},
                             "data": {"dataset": "cifar10_subset"}})
    code, _, err = _cli(["search", "--config", str(path), "--out", str(tmp_path / "run")], capsys)
    assert code == 2 and "strategy.knobs.popsize: unknown knob; allowed knobs: population, sample_size" in err


@pytest.mark.slow
def test_cli_bad_config_in_a_real_process_has_no_traceback(tmp_path):
    path = _write(tmp_path, {"reward": {"target_ms": 2, "typo": 1}})
    proc = subprocess.run([sys.executable, "-m", "mnas", "search", "--config", str(path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: {path}: reward.typo: unknown key; allowed keys: target_ms, target, alpha, beta, preset"
    assert "Traceback" not in proc.stderr + proc.stdout
