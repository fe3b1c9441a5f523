"""Supernet commands: `mnas supernet train` (one weight-sharing network for a whole space) and
`mnas supernet eval` (candidates scored with the weights they inherit)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from mnas import zoo
from mnas.arch_strings import to_timm_string
from mnas.errors import UserError
from mnas.paths import writable_dir
from mnas.run_options import (
    DEFAULT_BN_BATCHES,
    DEFAULT_DATASET,
    DEFAULT_DEVICE,
    DEFAULT_SCORE_IMAGES,
    DEFAULT_SEED,
    DEFAULT_VAL_SIZE,
    MAX_EVAL_CANDIDATES,
    RunOptions,
    check_num_random,
    sample_count,
)

app = typer.Typer(help="Weight sharing: train one supernet, then score candidates in seconds.", no_args_is_help=True)


@app.command("train")
def train_cmd(
    space: str | None = typer.Option(None, "--space", help="mnasnet_cifar (default), mnasnet, or a space YAML file."),
    data: str | None = typer.Option(None, "--data", help="cifar10 (default), cifar10_subset, fashion_mnist, imagefolder:P."),
    epochs: int | None = typer.Option(None, "--epochs", min=1, help="Epochs (default 10; with --resume: the run's)."),
    out: Path | None = typer.Option(None, "--out", help="Folder for supernet.pt, checkpoint.pt, metrics.jsonl."),
    rule: str | None = typer.Option(None, "--rule", help="sandwich (default: largest, smallest, 2 random paths) or spos."),
    num_random: int | None = typer.Option(None, "--num-random", min=0, help="Random paths per sandwich step (2; at most 16)."),
    recipe: str | None = typer.Option(None, "--recipe", help="cifar (default for <= 64 px data) or mnasnet."),
    train_subset: int | None = typer.Option(None, "--train-subset", min=1, help="Stratified subset of the training images."),
    val_size: float | None = typer.Option(None, "--val-size", help="Held-out validation: a fraction (<1) or a count (0.1)."),
    batch_size: int | None = typer.Option(None, "--batch-size", min=1, help="Default: the recipe's."),
    data_root: Path | None = typer.Option(None, "--data-root", help="Data folder (else $MNAS_DATA, else ~/.cache/mnas/data)."),
    resume: Path | None = typer.Option(None, "--resume", help="Continue the run in this folder from its checkpoint."),
    seed: int | None = typer.Option(None, "--seed", help="Default 0."),
    device: str | None = typer.Option(None, "--device", help="auto (default), cpu, cuda or cuda:N."),
    as_json: bool = typer.Option(False, "--json", help="No progress bar; print one JSON summary."),
) -> None:
    """Train a supernet of a space: checkpoints every epoch, Ctrl-C and --resume, torchrun for several GPUs."""
    from mnas.data import load_dataset  # lazy: torch (see mnas.cli)
    from mnas.space import SearchSpace
    from mnas.supernet.fit import fit_supernet
    from mnas.train.checkpoint import read_checkpoint
    from mnas.train.fit import RunWriteFailed, TrainingInterrupted
    from mnas.train.recipes import RECIPES
    from mnas.train.settings import FitConfig, SupernetSettings

    opts = RunOptions(data, str(data_root) if data_root else None, epochs, recipe, train_subset, val_size, batch_size,
                      seed, None, device)
    opts.check(tuple(RECIPES))
    check_num_random(num_random)
    notes: list[str] = []
    if resume is not None:
        if space is not None or out is not None:
            raise UserError("--resume continues the supernet run in its folder; drop --space and --out")
        ckpt_file = Path(resume) / "checkpoint.pt"
        if not ckpt_file.is_file():
            raise UserError(f"nothing to resume: {ckpt_file} does not exist")
        ckpt = read_checkpoint(ckpt_file)
        if "supernet" not in ckpt:
            raise UserError(f"{resume} is a `mnas train` run (one network), not a supernet run; continue it with "
                            f"`mnas train --resume {resume}`, or start a supernet with `mnas supernet train --out DIR`")
        saved = dict(ckpt.get("config") or {})
        run = FitConfig.from_saved(saved, str(ckpt_file)).supernet  # older checkpoints' "extra" included
        if run is None or run.space is None:
            raise UserError(f"{ckpt_file} does not record the space its supernet was trained on; it is damaged: "
                            "start the supernet again with --out DIR")
        for name, value in (("rule", rule), ("num_random", num_random)):
            if value is not None and value != getattr(run, name):
                raise UserError(f"--{name.replace('_', '-')} {value} contradicts the run's {getattr(run, name)}; drop it")
        settings, notes = opts.resumed(saved, str(Path(resume) / "checkpoint.pt"))
        config = FitConfig.from_saved(settings)
        sp = SearchSpace.from_dict(run.space, source=f"{resume}/checkpoint.pt")
        run_dir = writable_dir(resume, "supernet folder")
    else:
        if out is None:
            raise UserError("--out DIR is required: the folder for supernet.pt and checkpoint.pt")
        if (out / "checkpoint.pt").exists():
            raise UserError(f"{out} already holds a supernet run; continue it with --resume {out} or pick another --out")
        sp = SearchSpace.load(space or "mnasnet_cifar")
        settings_obj = SupernetSettings(rule=rule or "sandwich", num_random=2 if num_random is None else num_random)
        run_dir = writable_dir(out, "supernet folder")
        config = FitConfig(arch_name=f"supernet:{sp.name}", width_mult=1.0, supernet=settings_obj, **opts.new_run())
    dataset = load_dataset(config.data, data_root=config.data_root, val_size=config.val_size,
                           train_subset=config.train_subset, seed=config.seed)
    for note in notes:
        typer.echo(f"resume: {note}", err=True)
    try:
        summary = fit_supernet(sp, dataset, config, run_dir, resume=resume is not None, progress=not as_json)
    except TrainingInterrupted as exc:
        _emit({"status": "interrupted", "checkpoint": str(exc.checkpoint), "step": exc.step}, as_json,
              [f"interrupted at step {exc.step}; checkpoint saved. Continue with: mnas supernet train --resume {run_dir}"])
        raise typer.Exit(exc.exit_code) from None
    except RunWriteFailed as exc:
        raise exc.with_way_on(f"mnas supernet train --resume {run_dir}") from None
    if summary.get("signalled"):  # the signal came while the last epoch was scored: training is complete
        _emit({"status": "interrupted", **summary}, as_json,
              [f"interrupted while scoring the last epoch; every epoch is trained and saved in {summary['supernet']} "
               f"(its val top-1 was not measured: mnas supernet eval {run_dir} ARCH scores paths)"])
        raise typer.Exit(130)
    _emit({"status": "ok", **summary}, as_json, [
        f"supernet of {sp.name} ({summary['rule']}) on {dataset.name}: largest path val top-1 "
        f"{summary.get('val_acc', float('nan')):.4f} after {summary['epochs']} epochs ({summary['seconds']:.0f} s, "
        f"{summary.get('images_per_s', 0):.0f} img/s)",
        f"supernet: {summary['supernet']}  (score candidates: mnas supernet eval {run_dir} ARCH)",
    ])


@app.command("eval")
def eval_cmd(
    supernet: Path = typer.Argument(..., help="A supernet folder (or its supernet.pt)."),
    archs: list[str] = typer.Argument(..., help="Architectures of its space: strings, files, or 'sample:N' for N random."),
    bn_batches: int = typer.Option(DEFAULT_BN_BATCHES, "--bn-batches", min=1,
                                   help="Training batches to re-estimate BN statistics on."),
    images: int = typer.Option(DEFAULT_SCORE_IMAGES, "--images", min=1, help="Held-out validation images to score on."),
    data_root: Path | None = typer.Option(None, "--data-root", help="Data folder (else the one it was trained with)."),
    seed: int = typer.Option(DEFAULT_SEED, "--seed", help="Seed of 'sample:N'."),
    device: str = typer.Option(DEFAULT_DEVICE, "--device", help="auto, cpu, cuda or cuda:N."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON list."),
) -> None:
    """Held-out top-1 of candidates with inherited weights (BN re-estimated on K training batches)."""
    import random

    from mnas.data import check_fits, load_dataset  # lazy: torch (see mnas.cli)
    from mnas.supernet import load_supernet, score
    from mnas.train.engine import resolve_device

    total = 0
    for text in archs:  # how many, before anything loads
        total += sample_count(text, total) or 1
        if total > MAX_EVAL_CANDIDATES:
            raise UserError(f"{total:,} candidates given; score at most {MAX_EVAL_CANDIDATES:,} in one call")
    net, meta = load_supernet(supernet, device=resolve_device(device))
    candidates = []
    for text in archs:
        n = sample_count(text)
        if n is not None:
            rng = random.Random(seed)
            candidates += [net.space.sample(rng) for _ in range(n)]
        else:
            candidates.append(zoo.resolve(text)[0])
    for arch in candidates:
        net.resolve(arch)  # every candidate must be a path of the supernet, before any work
    cfg = dict(meta.get("config") or {})
    data = load_dataset(cfg.get("data", DEFAULT_DATASET), data_root=str(data_root) if data_root else cfg.get("data_root"),
                        val_size=cfg.get("val_size", DEFAULT_VAL_SIZE), train_subset=cfg.get("train_subset"),
                        seed=cfg.get("seed", DEFAULT_SEED))
    check_fits(data, net.num_classes, net.resolution, f"the supernet {supernet}")
    rows: list[dict[str, object]] = []

    def record(i: int, arch: object, acc: float, seconds: float) -> None:
        a = candidates[i]
        rows.append({"arch_id": a.id, "timm": to_timm_string(a), "accuracy": acc, "seconds": seconds})
        if not as_json:
            typer.echo(f"{a.id}  top-1 {acc:.4f}  ({seconds:.2f} s)")

    score(net, candidates, data, bn_batches=bn_batches, images=images, on_result=record)
    if as_json:
        typer.echo(json.dumps(rows, indent=2))


def _emit(obj: dict, as_json: bool, lines: list[str]) -> None:
    if as_json:
        typer.echo(json.dumps(obj))
    else:
        for line in lines:
            typer.echo(line)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="supernet")
