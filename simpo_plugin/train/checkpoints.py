"""Checkpoints are whole or ignored.

A run killed while ``checkpoint-N`` is being written leaves a folder that the host's resume (automatic, or
``resume_from_checkpoint: true``) would pick as the newest and crash on. Here a checkpoint counts only once it is
complete:

- **Written last:** when every rank has finished its part of a checkpoint, a manifest ``simpo_checkpoint.json``
  (each file's path and size) is written into it atomically (a temporary file renamed), by local rank 0 of each node;
  a manifest left by an earlier save of the same step is removed before the folder is written again
  (``SimPOTrainer._save_checkpoint``).
- **Checked on resume:** a checkpoint is complete when its manifest is there and every file it lists has its size.
  One without a manifest (written by another tool or an older plugin) is accepted when its ``trainer_state.json``,
  which the trainer writes after the weights, optimizer, scheduler and RNG states, reads as JSON.
- **Resume** takes the newest complete checkpoint and names, in one line, any newer one it skipped; a checkpoint given
  by path that is incomplete is an error naming what is missing and the newest complete one.
"""

import json
import os
import re
from pathlib import Path
from typing import Any

from llamafactory.extras import logging
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ..errors import SimPOArgumentError


logger = logging.get_logger("llamafactory.simpo")
MANIFEST = "simpo_checkpoint.json"
TRAINER_STATE = "trainer_state.json"
_CHECKPOINT = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")


def checkpoint_dir(output_dir: str | Path, step: int) -> str:
    """Where the host's trainer saves the checkpoint of ``step``."""
    return os.path.join(output_dir, f"{PREFIX_CHECKPOINT_DIR}-{step}")


def write_manifest(folder: str | Path) -> Path:
    """List every file of ``folder`` with its size in ``folder/simpo_checkpoint.json``, atomically."""
    folder = Path(folder)
    files = {
        str(path.relative_to(folder)): path.stat().st_size
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name != MANIFEST and not path.name.startswith(f".{MANIFEST}")
    }
    temporary = folder / f".{MANIFEST}.{os.getpid()}"
    temporary.write_text(json.dumps({"files": files}, indent=1), encoding="utf-8")
    os.replace(temporary, folder / MANIFEST)
    return folder / MANIFEST


def missing_parts(folder: str | Path) -> list[str]:
    """What makes the checkpoint in ``folder`` incomplete (empty when it is complete)."""
    folder = Path(folder)
    manifest = folder / MANIFEST
    if manifest.is_file():
        try:
            files = json.loads(manifest.read_text(encoding="utf-8"))["files"]
        except (ValueError, KeyError, TypeError):
            return [f"{MANIFEST} (unreadable)"]
        problems = []
        for name, size in files.items():
            path = folder / name
            if not path.is_file():
                problems.append(f"{name} (missing)")
            elif path.stat().st_size != size:
                problems.append(f"{name} ({path.stat().st_size} of {size} bytes)")
        return problems
    try:
        json.loads((folder / TRAINER_STATE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return [f"{TRAINER_STATE} (missing; written last by the trainer)"]
    except (OSError, ValueError):
        return [f"{TRAINER_STATE} (unreadable)"]
    return []


def checkpoints_newest_first(output_dir: str | Path) -> list[Path]:
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = [(int(match.group(1)), path) for path in output_dir.iterdir()
             if path.is_dir() and (match := _CHECKPOINT.match(path.name))]  # fmt: skip
    return [path for _, path in sorted(found, reverse=True)]


def _shown(problems: list[str]) -> str:
    return ", ".join(problems[:3]) + (f" and {len(problems) - 3} more" if len(problems) > 3 else "")


def newest_complete(output_dir: str | Path) -> tuple[Path | None, list[tuple[Path, list[str]]]]:
    """The newest complete checkpoint of ``output_dir`` (or None) and the newer, incomplete ones it passed over."""
    skipped = []
    for folder in checkpoints_newest_first(output_dir):
        problems = missing_parts(folder)
        if not problems:
            return folder, skipped
        skipped.append((folder, problems))
    return None, skipped


def resolve_resume(training_args: Any, given: bool) -> None:
    """Point ``training_args.resume_from_checkpoint`` at a complete checkpoint, or raise.

    Args:
        training_args: the host's training arguments; ``resume_from_checkpoint`` may be None, ``True`` (newest), or
            a path, which the user gave (``given``) or the host picked as the output dir's newest checkpoint.
        given: whether the user set ``resume_from_checkpoint`` themselves.

    Raises:
        SimPOArgumentError: a checkpoint the user named is incomplete (it names what is missing and the newest
            complete one), or ``resume_from_checkpoint: true`` finds no complete checkpoint.
    """
    resume = training_args.resume_from_checkpoint
    if resume is None or resume is False or str(resume).lower() == "false":
        return
    newest, skipped = newest_complete(training_args.output_dir)
    if str(resume).lower() != "true" and given:  # a checkpoint named by its path
        problems = missing_parts(resume)
        if problems:
            alternative = f"the newest complete one is {newest}" if newest else "no complete checkpoint is there"
            raise SimPOArgumentError(
                f"`resume_from_checkpoint: {resume}` is incomplete (a run stopped while writing it): "
                f"{_shown(problems)}; {alternative}."
            )
        return
    if skipped:
        logger.warning_rank0(
            "simpo-plugin: skipped incomplete checkpoint(s) "
            + "; ".join(f"{folder.name} ({_shown(problems)})" for folder, problems in skipped)
            + (f"; resuming from {newest}" if newest else "; none is complete, so training starts from the beginning")
        )
    if newest is None and str(resume).lower() == "true" and given:
        raise SimPOArgumentError(
            f"`resume_from_checkpoint: true` found no complete checkpoint in {training_args.output_dir}."
        )
    training_args.resume_from_checkpoint = str(newest) if newest is not None else None


def unmark(folder: str | Path) -> None:
    """Remove a manifest left by an earlier save of the same step, before that folder is written again."""
    Path(folder, MANIFEST).unlink(missing_ok=True)
