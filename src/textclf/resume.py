"""`textclf resume [folder] [overrides]`: the command line that continues an interrupted run
or sweep: the folder's own overrides, in that folder, with `train.resume` on.

A run folder resumes from its checkpoint in its own MLflow run (`pipeline.run`); a sweep
folder (it holds multirun.yaml) reopens its parent run, skips FINISHED jobs and resumes or
starts the others (`sweep.py`).
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from .run_folder import PARENT_RUN_ID, RunFolder


def latest_interrupted(outputs: Path) -> Path:
    """The newest run or sweep-job folder under `outputs` that still holds a checkpoint."""
    found = [
        *outputs.glob(f"runs/*/{RunFolder.CHECKPOINT}"),
        *outputs.glob(f"sweeps/*/*/{RunFolder.CHECKPOINT}"),
    ]
    if not found:
        raise SystemExit(
            f"textclf resume: no run under {outputs} holds a checkpoint (finished "
            "runs delete theirs); pass the run folder: textclf resume <folder>"
        )
    return max(found, key=lambda p: p.stat().st_mtime).parent


def arguments(args: list[str], outputs: Path) -> list[str]:
    """`[folder] [overrides]` → Hydra's arguments that continue the folder's run or sweep
    (the newest interrupted run under `outputs` when no folder is given)."""
    named = bool(args) and "=" not in args[0]
    folder = (Path(args[0]) if named else latest_interrupted(outputs)).resolve()
    extra = args[1:] if named else args
    if (folder / "multirun.yaml").is_file():
        return _sweep_arguments(folder, extra)
    saved = folder / ".hydra" / "overrides.yaml"
    if not saved.is_file():
        raise SystemExit(f"textclf resume: {folder} is not a run folder (no .hydra/overrides.yaml)")
    overrides = [str(o) for o in OmegaConf.load(saved)]  # a list of strings
    overrides = [o for o in overrides if not o.startswith("train.resume=")]
    # hydra.output_subdir=null: the folder's .hydra/ keeps the original run's overrides.
    return [
        *overrides,
        f"hydra.run.dir={folder}",
        "hydra.output_subdir=null",
        "train.resume=true",
        *extra,
    ]


def _sweep_arguments(folder: Path, extra: list[str]) -> list[str]:
    if not (folder / PARENT_RUN_ID).is_file():
        raise SystemExit(
            f"textclf resume: {folder} holds no {PARENT_RUN_ID}: its sweep never "
            "opened an MLflow parent run; start the sweep again instead."
        )
    saved = OmegaConf.load(folder / "multirun.yaml").hydra.overrides
    keep = [o for o in saved.hydra if not o.startswith(("hydra.sweep.dir=", "hydra.mode="))]
    task = [o for o in saved.task if not o.startswith("train.resume=")]
    return ["--multirun", *keep, *task, f"hydra.sweep.dir={folder}", "train.resume=true", *extra]
