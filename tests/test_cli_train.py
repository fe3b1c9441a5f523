"""`mnas train / eval / export` end to end on real CIFAR-10, and their one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mnas.architecture import Architecture, BlockSpec
from mnas.cli.app import main

pytestmark = pytest.mark.slow  # every test here trains, measures or searches

TINY = Architecture(
    blocks=(
        BlockSpec("ds", 1, 3, 0, "identity", 16, 1, 1),
        BlockSpec("mbconv", 3, 3, 0.25, "identity", 24, 1, 2),
        BlockSpec("mbconv", 3, 3, 0, "identity", 32, 1, 2),
    ),
    stem_filters=16, stem_stride=1, head_filters=64, name="tiny_cli",
)


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    out, err = capsys.readouterr()
    return int(exc.value.code or 0), out, err


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_root) -> Path:
    """One short run shared by the eval/export tests (trained through the CLI)."""
    root = tmp_path_factory.mktemp("cli_train")
    arch_file = root / "tiny.json"
    arch_file.write_text(TINY.to_json())
    out = root / "run"
    with pytest.raises(SystemExit) as exc:
        main(["train", str(arch_file), "--data", "cifar10_subset", "--data-root", str(data_root), "--epochs", "1",
              "--train-subset", "200", "--val-size", "100", "--batch-size", "50", "--out", str(out), "--json",
              "--device", "cpu"])
    assert exc.value.code in (0, None)
    return out


def test_train_writes_a_run_folder(trained):
    assert (trained / "checkpoint.pt").is_file()
    lines = (trained / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["epoch"] == 1
    summary = json.loads((trained / "summary.json").read_text())
    assert summary["recipe"] == "cifar" and summary["train_images"] == 200 and summary["val_images"] == 100


def test_eval_reports_test_top1(trained, capsys, data_root):
    code, out, _ = run(["eval", str(trained), "--json", "--device", "cpu", "--data-root", str(data_root)], capsys)
    assert code == 0
    res = json.loads(out)
    assert res["split"] == "test" and res["images"] == 2000 and 0.0 <= res["top1"] <= 1.0
    code, out, _ = run(["eval", str(trained / "checkpoint.pt"), "--split", "val", "--device", "cpu"], capsys)
    assert code == 0 and "val (100 images): top-1" in out


def test_export_onnx_and_torchscript_match_the_checkpoint(trained, tmp_path, capsys):
    import onnxruntime as ort

    from mnas.train.checkpoint import load_checkpoint

    _, model, meta = load_checkpoint(trained)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        ref = model(x).numpy()
    code, out, _ = run(["export", str(trained), "--format", "onnx", "--out", str(tmp_path / "m.onnx"), "--json"], capsys)
    assert code == 0 and json.loads(out)["resolution"] == 32
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-4)
    code, _, _ = run(["export", str(trained), "--format", "torchscript", "--out", str(tmp_path / "m.pt")], capsys)
    assert code == 0
    scripted = torch.jit.load(str(tmp_path / "m.pt"))
    np.testing.assert_allclose(scripted(x).detach().numpy(), ref, rtol=1e-4, atol=1e-5)


def test_arch_show_reads_the_checkpoint(trained, capsys):
    code, out, _ = run(["arch", "show", str(trained / "checkpoint.pt"), "--json"], capsys)
    assert code == 0 and json.loads(out)["id"] == TINY.id


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["train", "mnasnet_a1", "--data", "cifar10"], "--out"),
        (["train", "no_such_net", "--out", "{tmp}/x"], "not a zoo model"),
        (["train", "mnasnet_a1", "--data", "imagenet42", "--out", "{tmp}/x"], "unknown dataset"),
        (["train", "mnasnet_a1", "--data", "cifar10", "--data-root", "{tmp}/empty", "--out", "{tmp}/x"], "looked in"),
        (["train", "mnasnet_a1", "--recipe", "fast", "--out", "{tmp}/x"], "unknown recipe"),
        (["train", "mnasnet_a1", "--train-subset", "999999", "--out", "{tmp}/x"], "train-subset"),
        (["train", "--resume", "{tmp}/nothing"], "not found"),
        (["train"], "--resume"),
        (["eval", "{tmp}/missing"], "not found"),
        (["export", "{tmp}/missing", "--format", "onnx"], "not found"),
    ],
)
def test_clear_one_line_errors(argv, needle, tmp_path, capsys):
    code, _, err = run([a.replace("{tmp}", str(tmp_path)) for a in argv], capsys)
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and needle in err
    assert "Traceback" not in err


def test_export_format_and_existing_run_errors(trained, capsys):
    code, _, err = run(["export", str(trained), "--format", "caffe"], capsys)
    assert code == 2 and "onnx, tflite, torchscript" in err
    code, _, err = run(["train", "mnasnet_a1", "--out", str(trained)], capsys)
    assert code == 2 and "--resume" in err
