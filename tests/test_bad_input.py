"""Bad input, command by command: exit code 2, one line naming what is wrong, no traceback, and
nothing that existed is changed. Real CLI (`mnas.cli.app.main`), real files, real CIFAR-10."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from mnas import zoo
from mnas.arch_strings import to_timm_string
from mnas.cli.app import main
from mnas.space import SearchSpace


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    out, err = capsys.readouterr()
    return int(exc.value.code or 0), out, err


def one_line_error(argv: list[str], capsys) -> str:
    code, _, err = run(argv, capsys)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, (code, err)
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def tree_digest(folder: Path) -> str:
    """Names, sizes and contents of every file below `folder`: proves nothing was touched."""
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(folder)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def _cifar_like(folder: Path, y_train: np.ndarray, *, x: np.ndarray | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    n = len(y_train)
    x = np.zeros((n, 32, 32, 3), np.uint8) if x is None else x
    np.savez(folder / "cifar10_uint8.npz", x_train=x, y_train=y_train, x_test=x[:10], y_test=np.zeros(10, np.int64))
    return folder


A1 = to_timm_string(zoo.get("mnasnet_a1")).split(",")


# ---- architectures and spaces ---------------------------------------------------------------------
@pytest.mark.parametrize("item,needle", [
    ("ir_r4_k3_s2_e6_c80_foo_bar", "unknown or malformed token 'foo'"),
    ("ir_r4_k3_s2_e6_c80_sx0.25", "unknown or malformed token 'sx0.25'"),
    ("ir_r4_k3_s2_e6_c80_se-0.5", "unknown or malformed token 'se-0.5'"),
    ("ir_r4_r2_k3_s2_e6_c80", "repeats an earlier one"),
    ("ir_r100000_k3_s2_e6_c80", "block layers must lie in 1..32"),
])
def test_arch_show_rejects_strings_that_mean_something_else(item, needle, capsys):
    line = one_line_error(["arch", "show", ",".join(A1[:4] + [item] + A1[5:])], capsys)
    assert "item 5" in line and needle in line


@pytest.mark.parametrize("change,needle", [
    ({"filters": 24.5}, "block 2: block filters must be a whole number"),
    ({"kernel": "3"}, "block 2: block kernel must be a whole number"),
    ({"layers": 100000}, "block 2: block layers must lie in 1..32"),
])
def test_json_architecture_files_are_validated(change, needle, tmp_path, capsys):
    d = zoo.get("mnasnet_a1").to_dict()
    d["blocks"][1].update(change)
    f = tmp_path / "arch.json"
    f.write_text(json.dumps(d))
    assert needle in one_line_error(["arch", "show", str(f)], capsys)


@pytest.mark.parametrize("change,needle", [
    ({"kernels": ["3", "5"]}, "kernels.0: Input should be a valid integer"),
    ({"base_layers": [1, 2, 100000, 4, 3, 3, 1]}, "base_layers.2: Input should be less than or equal to 32"),
    ({"strides": [1, 3, 2, 2, 1, 2, 1]}, "strides.1: Input should be 1 or 2"),
])
@pytest.mark.parametrize("command", [("space", "info"), ("arch", "sample", "--seed", "3")])
def test_space_files_are_validated_before_use(change, needle, command, tmp_path, capsys):
    d = SearchSpace.cifar().to_dict()
    d.update(change)
    f = tmp_path / "space.yaml"
    f.write_text(yaml.safe_dump(d))
    assert needle in one_line_error([*command, "--space", str(f)], capsys)


# ---- training: options ------------------------------------------------------------------------------
@pytest.mark.parametrize("args,needle", [
    (["--epochs", "0"], "Invalid value for '--epochs'"),
    (["--batch-size", "0"], "Invalid value for '--batch-size'"),
    (["--val-size", "0"], "--val-size 0 must be a fraction"),
    (["--val-size", "2.5"], "--val-size 2.5 must be a fraction"),
    (["--skeleton", "round"], "--skeleton 'round': choose one of auto, cifar, imagenet"),
    (["--device", "tpu"], "unknown device 'tpu'"),
    (["--recipe", "fastest"], "unknown recipe 'fastest'"),
    (["--width-mult", "9"], "Invalid value for '--width-mult'"),
])
def test_train_options_are_checked_before_work(args, needle, tmp_path, capsys):
    line = one_line_error(["train", "mnasnet_a1", "--out", str(tmp_path / "run"), *args], capsys)
    assert needle in line
    assert not (tmp_path / "run").exists()


def test_train_out_that_is_a_file(tmp_path, capsys):
    f = tmp_path / "taken"
    f.write_text("precious")
    assert "is a file, not a folder" in one_line_error(["train", "mnasnet_a1", "--out", str(f)], capsys)
    assert f.read_text() == "precious"


# ---- training: data -------------------------------------------------------------------------------
@pytest.mark.parametrize("labels,needle", [
    (np.arange(60) % 60, "50 label(s) outside 0..9 (values 10, 11, 12"),
    (np.r_[np.arange(50) % 10, -1, -2, np.zeros(8, int)], "2 label(s) outside 0..9 (values -2, -1)"),
    (np.linspace(0, 9, 60), "labels must be whole numbers"),
])
def test_labels_outside_the_classes_are_refused(labels, needle, tmp_path, capsys):
    root = _cifar_like(tmp_path / "data", np.asarray(labels))
    line = one_line_error(["train", "mnasnet_small", "--data-root", str(root), "--out", str(tmp_path / "run"),
                           "--val-size", "10"], capsys)
    assert needle in line and "cifar10_uint8.npz" in line


def test_truncated_npz_is_one_line(tmp_path, capsys):
    root = _cifar_like(tmp_path / "data", np.arange(60) % 10)
    f = root / "cifar10_uint8.npz"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    line = one_line_error(["train", "mnasnet_small", "--data-root", str(root), "--out", str(tmp_path / "run")], capsys)
    assert "is corrupt or not a CIFAR npz" in line


def _image_folder(root: Path, classes: int, per_class: int) -> Path:
    from PIL import Image

    for split in ("train", "val"):
        for c in range(classes):
            d = root / split / f"class{c}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                Image.fromarray(np.full((8, 8, 3), 40 * c + i, np.uint8)).save(d / f"{i}.png")
    return root


@pytest.mark.parametrize("damage,needle", [
    ("not_an_image", "cannot be read (UnidentifiedImageError)"),
    ("one_class", "holds 1 class folder(s); classification needs at least 2"),
    ("too_few", "the training split has 10 images, fewer than one batch of 128"),
])
def test_image_folder_problems_are_found_before_training(damage, needle, tmp_path, capsys):
    root = _image_folder(tmp_path / "imgs", 1 if damage == "one_class" else 2, 6)
    if damage == "not_an_image":
        (root / "train" / "class1" / "broken.png").write_text("this is not a png")
    line = one_line_error(["train", "mnasnet_small", "--data", f"imagefolder:{root}", "--out", str(tmp_path / "run"),
                           "--val-size", "2", "--device", "cpu"], capsys)
    assert needle in line


# ---- training: resume -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, data_root) -> Path:
    out = tmp_path_factory.mktemp("bad_input") / "run"
    tiny = "stem_k3_s1_c8_nre,ds_r1_k3_s1_e1_c8,ir_r1_k3_s2_e3_c16,head_c32"
    with pytest.raises(SystemExit) as exc:
        main(["train", tiny, "--data", "cifar10_subset", "--data-root", str(data_root), "--epochs", "1",
              "--train-subset", "100", "--val-size", "50", "--batch-size", "50", "--out", str(out), "--json",
              "--device", "cpu"])
    assert exc.value.code in (0, None)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("args,needle", [
    (["--seed", "3"], "--seed 3 (the run has 0) contradicts the checkpoint"),
    (["--batch-size", "25"], "--batch-size 25 (the run has 50) contradicts"),
    (["--data", "cifar10"], "--data cifar10 (the run has cifar10_subset) contradicts"),
    (["--width-mult", "0.5"], "drop ARCH, --width-mult"),
])
def test_resume_refuses_contradicting_options(finished_run, args, needle, capsys):
    before = tree_digest(finished_run)
    assert needle in one_line_error(["train", "--resume", str(finished_run), *args], capsys)
    assert needle != "" and tree_digest(finished_run) == before
    assert "drop ARCH" in one_line_error(["train", "mnasnet_a1", "--resume", str(finished_run)], capsys)
    assert tree_digest(finished_run) == before


@pytest.mark.slow
def test_resume_of_a_finished_run_keeps_its_summary(finished_run, capsys):
    before = tree_digest(finished_run)
    code, out, _ = run(["train", "--resume", str(finished_run), "--json"], capsys)
    assert code == 0 and json.loads(out)["val_acc"] == json.loads((finished_run / "summary.json").read_text())["val_acc"]
    assert tree_digest(finished_run) == before


# ---- search ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("proxy,needle", [
    ({"optimizer": "adamax"}, "proxy.optimizer: Input should be 'sgd', 'rmsprop' or 'adamw'"),
    ({"schedule": "linear"}, "proxy.schedule: Input should be 'cosine', 'mnasnet' or 'constant'"),
    ({"device": "tpu"}, "proxy.device: unknown device 'tpu'"),
    ({"batch_size": 0}, "proxy.batch_size: Input should be greater than 0"),
])
def test_search_config_values_that_cannot_work(proxy, needle, tmp_path, capsys):
    f = tmp_path / "s.yaml"
    f.write_text(yaml.safe_dump({"reward": {"target_ms": 2}, "proxy": proxy}))
    line = one_line_error(["search", "--config", str(f), "--out", str(tmp_path / "run")], capsys)
    assert needle in line and str(f) in line
    assert not (tmp_path / "run").exists()


# ---- one validation for a setting, wherever it is written (#28) ------------------------------------
def _config_commands(f: Path, tmp_path: Path) -> list[list[str]]:
    """Every command that reads a search config file."""
    return [["search", "--config", str(f), "--out", str(tmp_path / "run")],
            ["store", "recover", str(tmp_path / "no_run"), "--config", str(f)]]


@pytest.mark.parametrize("command", [0, 1], ids=["search", "store-recover"])
@pytest.mark.parametrize("text,needle", [
    ("latency: {threads: 1000}", "latency.threads: 1000 is more than the"),
    ("latency: {reference: resnet50}", "latency.0.reference: unknown zoo model 'resnet50'"),
    ("latency: {reference: none}", "latency.0.reference: a search times every candidate against a reference"),
    ("latency: {resolution: 100000}", "latency.0.resolution: resolution must lie in 8..1024"),
    ("latency: {processes: 1000}", "latency.0.processes: Input should be less than or equal to 64"),
    ("latency: {batch: 100000}", "latency.0.batch: Input should be less than or equal to 1024"),
    ("latency: {num_classes: 1000000000}", "latency.0.num_classes: Input should be less than or equal to 100000"),
    ("latency: {reference_ms: -1}", "latency.0.reference_ms: Input should be greater than 0"),
    ("proxy: {epochs: .inf}", "proxy.epochs: inf is not a finite number"),
    ("proxy: {lr: .inf}", "proxy.lr: inf is not a finite number"),
    ("proxy: {lr: .nan}", "proxy.lr: nan is not a finite number"),
    ("reward: {target_ms: 2, alpha: -1e308}", "reward.alpha: Input should be greater than or equal to -1"),
    ("reward: {target_ms: 2, beta: -5}", "reward.beta: Input should be greater than or equal to -1"),
    ("reward: {target_ms: .inf}", "reward.target_ms: inf is not a finite number"),
    ("proxy: {batch_size: true}", "proxy.batch_size: true is a boolean, not a number"),
    ("budget: {trials: '8'}", "budget.trials: '8' is text, not a number"),
    ("strategy: {name: evolution, knobs: {population: true}}", "strategy.knobs.population: true is a boolean"),
    ("reward: {target_ms: 2, target: 1.0 x mobilenet_v2}", "reward: give target_ms or target, not both"),
    ("proxy: {epochs: 1}\nproxy: {epochs: 2}", "YAML syntax error at line 3, column 1: key 'proxy' appears twice"),
    ("proxy: {epochs: 1, epochs: 2}", "key 'epochs' appears twice"),
])
def test_config_values_get_the_flags_bounds(text, needle, command, tmp_path, capsys):
    f = tmp_path / "s.yaml"
    f.write_text(text if text.startswith("reward") else "reward: {target_ms: 2}\n" + text)
    line = one_line_error(_config_commands(f, tmp_path)[command], capsys)
    assert needle in line and str(f) in line
    assert not (tmp_path / "run").exists()


def test_config_numbers_stay_numbers(tmp_path):
    """1.0 is a whole number for an int, an int is a float, and 1e-3 (YAML 1.2) is a number."""
    from mnas.search.config import load_config

    f = tmp_path / "s.yaml"
    f.write_text("reward: {target_ms: 2, alpha: -7e-2}\nproxy: {batch_size: 8.0, epochs: 2, lr: 1e-3}\n")
    c = load_config(f)
    assert c.proxy.batch_size == 8 and c.proxy.epochs == 2.0 and c.proxy.lr == 0.001 and c.reward.alpha == -0.07


@pytest.mark.parametrize("command", [0, 1], ids=["search", "store-recover"])
def test_config_that_is_not_utf8(command, tmp_path, capsys):
    f = tmp_path / "s.yaml"
    f.write_bytes("reward: {target_ms: 2}\n# caf\u00e9\n".encode("latin-1"))
    line = one_line_error(_config_commands(f, tmp_path)[command], capsys)
    assert "is not UTF-8 text" in line and str(f) in line


SPACE_COMMANDS = [("space", "info"), ("arch", "sample", "--seed", "3")]


@pytest.mark.parametrize("change,needle", [
    ({"kernels": [3, 3, 3]}, "kernels: 3 is listed twice"),
    ({"ops": ["mbconv6", {"op": "mbconv", "expand": 6}]}, "is listed twice"),
    ({"skips": ["none", "none"]}, "skips: 'none' is listed twice"),
    ({"layer_deltas": [0, 1, 0]}, "layer_deltas: 0 is listed twice"),
])
@pytest.mark.parametrize("command", SPACE_COMMANDS)
def test_space_choices_are_listed_once(change, needle, command, tmp_path, capsys):
    d = SearchSpace.cifar().to_dict()
    d.update(change)
    f = tmp_path / "space.yaml"
    f.write_text(yaml.safe_dump(d))
    assert needle in one_line_error([*command, "--space", str(f)], capsys)


@pytest.mark.parametrize("suffix", ["yaml", "json"])
@pytest.mark.parametrize("command", SPACE_COMMANDS)
def test_space_files_with_a_key_twice(suffix, command, tmp_path, capsys):
    text = json.dumps(SearchSpace.cifar().to_dict())
    text = text.replace('"kernels": [3, 5]', '"kernels": [3, 5], "kernels": [7]')
    assert text.count('"kernels"') == 2
    f = tmp_path / f"space.{suffix}"
    f.write_text(text)
    assert "key 'kernels' appears twice" in one_line_error([*command, "--space", str(f)], capsys)


@pytest.mark.parametrize("command", SPACE_COMMANDS)
def test_space_file_that_is_not_utf8(command, tmp_path, capsys):
    f = tmp_path / "space.yaml"
    f.write_bytes(yaml.safe_dump(SearchSpace.cifar().to_dict()).encode() + "# \u00e9\n".encode("latin-1"))
    assert "is not UTF-8 text" in one_line_error([*command, "--space", str(f)], capsys)


def test_architecture_json_with_a_key_twice(tmp_path, capsys):
    text = zoo.get("mnasnet_a1").to_json()
    text = text.replace('"stem_filters": 32', '"stem_filters": 32, "stem_filters": 16')
    f = tmp_path / "arch.json"
    f.write_text(text)
    assert "key 'stem_filters' appears twice" in one_line_error(["arch", "show", str(f)], capsys)
    assert "key 'stem_filters' appears twice" in one_line_error(["arch", "show", text], capsys)


def _arch_commands(arch: str, tmp_path: Path) -> list[list[str]]:
    """Commands that take an architecture (checked before any work)."""
    return [["arch", "show", arch], ["train", arch, "--out", str(tmp_path / "run")],
            ["latency", "measure", arch]]


@pytest.mark.parametrize("command", [0, 1, 2], ids=["arch-show", "train", "latency-measure"])
@pytest.mark.parametrize("digit", ["\uff13", "\u0663", "\u09e9"])  # full-width, Arabic-Indic, Bengali 3
def test_architecture_strings_take_ascii_digits_only(digit, command, tmp_path, capsys):
    text = ",".join(A1[:2] + [A1[2].replace("k3", f"k{digit}").replace("k5", f"k{digit}")] + A1[3:])
    line = one_line_error(_arch_commands(text, tmp_path)[command], capsys)
    assert "unknown or malformed token" in line and not (tmp_path / "run").exists()


# ---- paths and strings (#28) ----------------------------------------------------------------------
def _long_tf_string() -> str:
    from mnas.arch_strings import to_tf_string

    space = SearchSpace.default()
    for seed in range(200):
        text = to_tf_string(space.sample(seed))
        if len(text) > 255 and "/" not in text:
            return text
    raise AssertionError("no sampled architecture has a TF string over 255 characters")


def test_a_long_architecture_string_is_read_not_looked_up(capsys):
    text = _long_tf_string()
    code, out, err = run(["arch", "show", text], capsys)
    assert code == 0, err


@pytest.mark.parametrize("argv", [
    ["arch", "show", "x" * 300],
    ["arch", "show", "x" * 300 + ".json"],
    ["space", "info", "--space", "s" * 300 + ".yaml"],
    ["search", "--config", "c" * 300 + ".yaml", "--out", "run"],
    ["train", "mnasnet_small", "--out", "o" * 300],
    ["report", "r" * 300],
    ["best", "b" * 300],
    ["store", "check", "s" * 300],
    ["search", "--resume", "r" * 300],
    ["train", "--resume", "r" * 300],
    ["supernet", "train", "--out", "o" * 300, "--epochs", "1"],
    ["latency", "measure", "m" * 300],
])
def test_over_long_names_are_one_line(argv, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    line = one_line_error(argv, capsys)
    assert "too long" in line and "internal error" not in line


def test_a_reference_may_be_an_architecture_string(tmp_path):
    from mnas.search.config import load_config

    f = tmp_path / "s.yaml"
    f.write_text(yaml.safe_dump({"reward": {"target_ms": 2}, "latency": {"reference": ",".join(A1)}}))
    assert load_config(f).primary.reference == ",".join(A1)


def test_architecture_file_that_is_not_utf8(tmp_path, capsys):
    f = tmp_path / "arch.yaml"
    f.write_bytes(("# caf\u00e9\n" + ",".join(A1)).encode("latin-1"))
    assert "is not UTF-8 text" in one_line_error(["arch", "show", str(f)], capsys)


@pytest.mark.parametrize("suffix", ["yaml", "json"])
def test_deeply_nested_config_and_space_files_are_one_line(suffix, tmp_path, capsys):
    deep = "[" * 100_000 + "]" * 100_000
    config = tmp_path / f"search.{suffix}"
    config.write_text(f'{{"space": "mnasnet_cifar", "reward": {{"target_ms": 2}}, "proxy": {deep}}}')
    line = one_line_error(["search", "-c", str(config), "--out", str(tmp_path / "run")], capsys)
    assert "more than 32 levels deep" in line and str(config) in line
    space = tmp_path / f"space.{suffix}"
    space.write_text(f'{{"name": "deep", "ops": {deep}}}')
    line = one_line_error(["space", "info", "--space", str(space)], capsys)
    assert "more than 32 levels deep" in line
    assert not (tmp_path / "run").exists()
