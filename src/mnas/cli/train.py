"""Training commands: `mnas train`, `mnas eval`, `mnas export` (thin: parse, call the library, print)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from mnas import zoo
from mnas.architecture import Architecture
from mnas.errors import Terminated, UserError
from mnas.paths import new_dir, output_file, writable_dir
from mnas.run_options import DEFAULT_DEVICE, RunOptions

FORMATS = {"onnx": ".onnx", "tflite": ".tflite", "torchscript": ".pt"}


def _emit(obj: dict, as_json: bool, lines: list[str]) -> None:
    if as_json:
        typer.echo(json.dumps(obj))
    else:
        for line in lines:
            typer.echo(line)


def train_cmd(
    arch: str | None = typer.Argument(None, help="A zoo name, an architecture file or string (optional with --resume)."),
    data: str | None = typer.Option(None, "--data", help="cifar10 (default), cifar10_subset, fashion_mnist, imagefolder:P."),
    epochs: int | None = typer.Option(None, "--epochs", min=1, help="Epochs to train (default 10; with --resume: the run's)."),
    recipe: str | None = typer.Option(None, "--recipe", help="mnasnet (the paper's) or cifar (default for <= 64 px data)."),
    out: Path | None = typer.Option(None, "--out", help="Run folder for checkpoint.pt, metrics.jsonl, summary.json."),
    train_subset: int | None = typer.Option(None, "--train-subset", min=1, help="Stratified subset of the training images."),
    val_size: float | None = typer.Option(None, "--val-size", help="Held-out validation: a fraction (<1) or a count (0.1)."),
    batch_size: int | None = typer.Option(None, "--batch-size", min=1, help="Default: the recipe's (mnasnet 128, cifar 64)."),
    data_root: Path | None = typer.Option(None, "--data-root", help="Data folder (else $MNAS_DATA, else ~/.cache/mnas/data)."),
    resume: Path | None = typer.Option(None, "--resume", help="Continue the run in this folder from its checkpoint."),
    seed: int | None = typer.Option(None, "--seed", help="Default 0."),
    width_mult: float | None = typer.Option(None, "--width-mult", min=0.1, max=4.0, help="Width multiplier (default 1.0)."),
    skeleton: str | None = typer.Option(None, "--skeleton", help="auto (CIFAR skeleton <= 64 px; default), cifar, imagenet."),
    device: str | None = typer.Option(None, "--device", help="auto (default), cpu, cuda or cuda:N."),
    init_from_supernet: Path | None = typer.Option(None, "--init-from-supernet",
                                                   help="Start from the weights ARCH inherits from this supernet."),
    compile_model: bool = typer.Option(False, "--compile", help="torch.compile the model (CUDA)."),
    test: bool = typer.Option(False, "--test", help="Also report test top-1 at the end (else: `mnas eval`)."),
    as_json: bool = typer.Option(False, "--json", help="No progress bar; print one JSON summary."),
) -> None:
    """Train a network fully with checkpoints every epoch; --resume continues exactly."""
    try:
        from mnas.data import load_dataset  # lazy: torch (see mnas.cli)
        from mnas.train.checkpoint import checkpoint_path, read_checkpoint
        from mnas.train.fit import RunWriteFailed, TrainingInterrupted, fit
        from mnas.train.recipes import RECIPES
        from mnas.train.settings import FitConfig

        opts = RunOptions(data, str(data_root) if data_root else None, epochs, recipe, train_subset, val_size, batch_size,
                          seed, skeleton, device)
        opts.check(tuple(RECIPES))
        notes: list[str] = []
        if resume is not None:
            if arch is not None or width_mult is not None or init_from_supernet is not None:
                raise UserError("--resume continues the network stored in the checkpoint; drop ARCH, --width-mult and "
                                "--init-from-supernet")
            path = checkpoint_path(resume)
            saved, notes = opts.resumed(dict(read_checkpoint(path).get("config") or {}), str(path))
            config = FitConfig.from_saved({k: v for k, v in saved.items() if k not in ("extra", "supernet")}, str(path))
            out = writable_dir(out or path.parent, "run folder")
            arch_obj = zoo.resolve(str(path))[0]
        else:
            if arch is None:
                raise UserError("give an architecture (e.g. mnasnet_a1) or --resume RUN_DIR")
            if out is None:
                raise UserError("--out DIR is required: the folder for checkpoint.pt and metrics.jsonl")
            if (out / "checkpoint.pt").exists():
                raise UserError(f"{out} already holds a run; continue it with --resume {out} or pick another --out")
            wm = 1.0 if width_mult is None else width_mult
            arch_obj, name = zoo.resolve(arch, wm)
            out = new_dir(out, "run folder")
            config = FitConfig(arch_name=name, width_mult=wm, compile=compile_model, **opts.new_run())
        dataset = load_dataset(config.data, data_root=config.data_root, val_size=config.val_size,
                               train_subset=config.train_subset, seed=config.seed)
        init_state = _inherited_weights(init_from_supernet, arch_obj, dataset.resolution, dataset.num_classes,
                                        config.skeleton) if init_from_supernet else None
        for note in notes:
            typer.echo(f"resume: {note}", err=True)
        try:
            summary = fit(arch_obj, dataset, config, out, resume=resume is not None, progress=not as_json, evaluate_test=test,
                          init_state=init_state)
        except TrainingInterrupted as exc:  # (a Terminated from before the first step: below)
            if exc.finished:
                _emit({"status": "interrupted", "checkpoint": str(exc.checkpoint), "step": exc.step, "trained": True},
                      as_json, [f"interrupted during the test evaluation; every epoch is trained and saved in "
                                f"{exc.checkpoint}: score it with mnas eval {out}"])
            else:
                _emit({"status": "interrupted", "checkpoint": str(exc.checkpoint), "step": exc.step}, as_json,
                      [f"interrupted at step {exc.step}; checkpoint saved. Continue with: mnas train --resume {out}"])
            raise typer.Exit(exc.exit_code) from None
        except RunWriteFailed as exc:
            raise exc.with_way_on(f"mnas train --resume {out}") from None
    except Terminated:  # SIGTERM before training started (from then on `fit` saves and says so)
        typer.echo("terminated before training started; no checkpoint was written or changed", err=True)
        raise typer.Exit(TERMINATED_EXIT) from None
    _report(summary, dataset.name, out, as_json)


#: 128 + SIGTERM, as a shell reports a process ended by it (Ctrl-C: 130).
TERMINATED_EXIT = 143


def _report(summary: dict[str, Any], dataset: str, out: Path, as_json: bool) -> None:
    """The finished run, one line each (or one JSON object)."""
    test_text = f", test top-1 {summary['test_acc']:.4f}" if "test_acc" in summary else ""
    _emit({"status": "ok", **summary}, as_json, [
        f"{summary['arch']} on {dataset}: val top-1 {summary.get('val_acc', float('nan')):.4f} "
        f"({summary['val_images']} held-out train images){test_text} after {summary['epochs']} epochs "
        f"({summary['seconds']:.0f} s, {summary.get('images_per_s', 0):.0f} img/s)",
        f"checkpoint: {summary['checkpoint']}  (test top-1: mnas eval {out})",
    ])


def _inherited_weights(path: Path, arch: Architecture, resolution: int, num_classes: int, skeleton: str) -> dict[str, Any]:
    """The weights `arch` inherits from a supernet, for fine-tuning (the paper trains from scratch;
    this is the weight-sharing alternative)."""
    from mnas.supernet import extract, load_supernet  # lazy: torch (see mnas.cli)

    supernet, _ = load_supernet(path, resolution=resolution, num_classes=num_classes)
    if supernet.skeleton != skeleton:
        raise UserError(f"the supernet {path} uses the {supernet.skeleton!r} skeleton, this run {skeleton!r}; "
                        f"pass --skeleton {supernet.skeleton}")
    return extract(supernet, arch).state_dict()


def eval_cmd(
    checkpoint: Path = typer.Argument(..., help="checkpoint.pt written by `mnas train`, or its folder."),
    split: str = typer.Option("test", "--split", help="test (default) or val."),
    data: str | None = typer.Option(None, "--data", help="Dataset (default: the one it was trained on)."),
    data_root: Path | None = typer.Option(None, "--data-root"),
    batch_size: int | None = typer.Option(None, "--batch-size", min=1, help="Default: 500 on CUDA, 128 on CPU."),
    device: str = typer.Option(DEFAULT_DEVICE, "--device"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Top-1 accuracy of a saved model on the test set (EMA weights when the recipe uses them)."""
    from mnas.train.evaluate import evaluate_checkpoint  # lazy: torch (see mnas.cli)

    res = evaluate_checkpoint(checkpoint, data_root=data_root, split=split, device=device,
                              batch_size=batch_size, data_name=data)
    _emit(res, as_json, [f"{res['arch']} on {res['dataset']} {split} ({res['images']} images): "
                         f"top-1 {res['top1']:.4f}, loss {res['loss']:.4f}"])


def export_cmd(
    checkpoint: Path = typer.Argument(..., help="checkpoint.pt written by `mnas train`, or its folder."),
    fmt: str = typer.Option("onnx", "--format", help="onnx, tflite or torchscript."),
    out: str | None = typer.Option(None, "--out", help="Output file (default: next to the checkpoint)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing output file (never the run's own files)."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Write the trained model as ONNX, LiteRT (.tflite) or TorchScript at its training resolution."""
    from mnas import export  # lazy: torch (see mnas.cli)
    from mnas.train.checkpoint import checkpoint_path, load_checkpoint

    if fmt not in FORMATS:
        raise UserError(f"unknown --format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    if out == "":
        raise UserError("--out is empty; give the output file name, or leave --out out to write next to the checkpoint")
    path = checkpoint_path(checkpoint)
    default = path.with_name(f"model{FORMATS[fmt]}" if fmt != "torchscript" else "model.torchscript.pt")
    target = output_file(out if out is not None else default, "--out" if out is not None else "the export file",
                         force=force, inputs=[path])
    arch, model, meta = load_checkpoint(path)
    resolution = int(meta["resolution"])
    writer = {"onnx": export.to_onnx, "tflite": export.to_tflite, "torchscript": export.to_torchscript}[fmt]
    written = writer(model, target, resolution)
    info = {"path": str(written), "format": fmt, "resolution": resolution, "arch_id": arch.id,
            "bytes": Path(written).stat().st_size}
    _emit(info, as_json, [f"wrote {written} ({fmt}, {resolution}x{resolution}, {info['bytes']:,} bytes)"])


def register(app: typer.Typer) -> None:
    app.command("train")(train_cmd)
    app.command("eval")(eval_cmd)
    app.command("export")(export_cmd)
