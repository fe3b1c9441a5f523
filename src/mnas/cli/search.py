"""Search commands: `mnas search`, `mnas report RUN_DIR`, `mnas best RUN_DIR`."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console

from mnas.arch_strings import to_timm_string
from mnas.errors import UserError, keeps
from mnas.paths import new_dir, output_file, writable_dir, write_text
from mnas.search.config import SearchConfig
from mnas.search.trial import Trial

if TYPE_CHECKING:  # torch loads inside the commands (see mnas.cli)
    from torch import nn

console = Console(stderr=True)


def search(
    config: Path | None = typer.Option(None, "--config", "-c", help="Search YAML (see examples/)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="New run directory (default runs/<config>-<time>)."),
    resume: Path | None = typer.Option(None, "--resume", help="Continue the run in this directory."),
    executor: str | None = typer.Option(None, "--executor", help="local or ray (overrides the config)."),
    ray_address: str | None = typer.Option(None, "--ray-address", help="Ray cluster address (implies --executor ray)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress display."),
) -> None:
    """Search architectures: ask -> evaluate (latency + proxy accuracy) -> reward -> store -> tell."""
    from mnas.search.config import load_config  # lazy: torch (see mnas.cli)
    from mnas.search.loop import override_executor, resume_search, start_search
    from mnas.search.store import DB_NAME, refuse_existing_run

    if executor is not None and executor not in ("local", "ray"):
        raise UserError(f"--executor {executor!r}: choose local or ray")
    if resume is not None:
        if config is not None or out is not None:
            raise UserError("--resume continues a run with its stored config; drop --config/--out")
        run_dir = resume
        if (run_dir / DB_NAME).is_file():
            writable_dir(run_dir, "run folder", create=False)
    else:
        if config is None:
            raise UserError("give --config FILE.yaml (a new search) or --resume RUN_DIR")
        cfg = override_executor(load_config(config), executor, ray_address)
        run_dir = out or Path("runs") / f"{config.stem}-{time.strftime('%Y%m%d-%H%M%S')}"
        refuse_existing_run(run_dir)
        new_dir(run_dir, "run folder (--out)", create=False)

    def stored() -> bool:
        """The run's store exists (what a --resume continues)."""
        return (run_dir / DB_NAME).exists()

    def what_is_kept() -> str:
        if stored():
            return f"finished trials are stored in {run_dir}; free some space, then continue with: mnas search --resume {run_dir}"
        return "nothing was stored yet; free some space and start the search again"

    try:
        with keeps(what_is_kept):
            if resume is not None:
                outcome = resume_search(run_dir, executor_name=executor, ray_address=ray_address,
                                        show_progress=not quiet)
            else:
                outcome = start_search(cfg, run_dir, show_progress=not quiet, config_path=str(config))
    except KeyboardInterrupt:
        if stored():
            console.print(f"stopped; finished trials are stored. Continue with: "
                          f"mnas search --resume {run_dir}", highlight=False)
        raise
    counts = outcome.counts
    why = {"time": "time budget", "budget": "trial budget",
           "repeats": "the strategy proposed only architectures it had seen, 20 asks in a row"}[outcome.stopped]
    console.print(f"search finished ({why}): {counts['done']} done, {counts['failed']} failed, "
                  f"{outcome.repeats} repeat(s) answered from earlier trials, in {outcome.elapsed_s:.0f} s; "
                  f"run in {outcome.run_dir}", highlight=False)
    if outcome.best is not None:
        b = outcome.best
        console.print(f"best: trial {b.trial_id}  reward {b.reward:.4f}  accuracy {b.accuracy:.4f}  "
                      f"latency {b.latency_ms:.3f} ms", highlight=False)
    console.print(f"next: mnas report {outcome.run_dir}", highlight=False)


#: What `mnas report` writes into the run folder (its own outputs: regenerated, never through a link).
REPORT_FILES = ("report.md", "pareto.png", "latency_hist.png", "reward_curve.png")
#: What `mnas best --export DIR` writes into DIR.
EXPORT_FILES = ("model.onnx", "arch.json", "arch.timm.txt")


def report(
    run_dir: Path = typer.Argument(..., help="A search run directory."),
    as_json: bool = typer.Option(False, "--json", help="Print the Pareto set as JSON."),
    zoo: bool = typer.Option(True, "--zoo/--no-zoo", help="Mark zoo models measured on the same target."),
) -> None:
    """Write pareto.png, latency_hist.png, reward_curve.png and report.md into RUN_DIR."""
    from mnas.search.report import pareto_json, write_report  # lazy: torch (see mnas.cli)
    from mnas.search.store import DB_NAME

    if (run_dir / DB_NAME).is_file():
        writable_dir(run_dir, "run folder (the report is written into it)", create=False)
        for name in REPORT_FILES:  # the report's own files are redrawn; a link or a folder there is refused
            output_file(run_dir / name, "report file", force=True, create_folder=False)
    files = write_report(run_dir, zoo=zoo)
    if as_json:
        typer.echo(pareto_json(run_dir))
    else:
        console.print(f"wrote {files.markdown}, {files.pareto.name}, {files.latency_hist.name}, "
                      f"{files.reward_curve.name}", highlight=False)


def best(
    run_dir: Path = typer.Argument(..., help="A search run directory."),
    max_latency: float | None = typer.Option(None, "--max-latency", help="Most accurate model within MS milliseconds."),
    export: str | None = typer.Option(None, "--export", help="Write model.onnx, arch.json and arch.timm.txt here."),
    force: bool = typer.Option(False, "--force", help="With --export: replace those files if the folder has them."),
) -> None:
    """Pick a model: the best reward, or the most accurate one under --max-latency."""
    from mnas.search.report import load_run, pick_best, trial_record  # lazy: torch (see mnas.cli)

    if max_latency is not None and max_latency <= 0:
        raise UserError(f"--max-latency must be > 0 ms (got {max_latency:g})")
    if force and export is None:
        raise UserError("--force replaces files written by --export; give --export DIR or drop --force")
    export_dir = None
    if export is not None:
        if export == "":
            raise UserError("--export is empty; give the folder to write model.onnx, arch.json and arch.timm.txt into")
        export_dir = writable_dir(export, "export folder (--export)", create=False)
        for name in EXPORT_FILES:
            output_file(export_dir / name, f"--export {export}: the file", force=force, create_folder=False)
    run = load_run(run_dir)
    trial = pick_best(run, max_latency)
    record = trial_record(trial)
    if export_dir is not None:
        record["exported"] = [str(p) for p in export_trial(trial, run.config, export_dir)]
    typer.echo(json.dumps(record, indent=2))


def export_trial(trial: Trial, config: SearchConfig, out_dir: Path) -> list[Path]:
    """The picked network as ONNX plus its arch strings. With a supernet proxy it carries the
    weights it inherits (BN statistics of the supernet; fine-tune it with `mnas train ARCH
    --init-from-supernet`); a proxy-trained candidate's weights are not kept, so it is untrained.
    Each file is written whole and renamed into place (`mnas.paths`); the caller checked them."""
    from mnas.export import to_onnx  # lazy: torch (see mnas.cli)
    from mnas.model import build_model

    lat = config.primary
    resolution = lat.resolution or 224
    arch = trial.arch.for_resolution(resolution)
    writable_dir(out_dir, "export folder (--export)")
    model: nn.Module
    from mnas.search.accuracy import make_accuracy_model

    trained = make_accuracy_model(config).trained_model(trial.arch, lat.num_classes or 1000)
    model = trained if trained is not None else build_model(arch, num_classes=lat.num_classes or 1000).eval()
    onnx_path = to_onnx(model, out_dir / "model.onnx", resolution=resolution)
    write_text(out_dir / "arch.json", arch.to_json(indent=2) + "\n")
    write_text(out_dir / "arch.timm.txt", to_timm_string(arch) + "\n")
    return [onnx_path, out_dir / "arch.json", out_dir / "arch.timm.txt"]


def register(app: typer.Typer) -> None:
    app.command("search")(search)
    app.command("report")(report)
    app.command("best")(best)
