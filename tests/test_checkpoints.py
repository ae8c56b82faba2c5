"""Checkpoints are whole or ignored: the manifest written last, the completeness check, and resume's choice."""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import base_config, log_history, run_cli

from simpo_plugin.errors import SimPOArgumentError
from simpo_plugin.train.checkpoints import MANIFEST, missing_parts, newest_complete, resolve_resume, write_manifest


pytestmark = pytest.mark.host  # the host's contract: `make test-lowest` runs it too


def fake_checkpoint(output_dir: Path, step: int, manifest: bool = True, state: bool = True) -> Path:
    folder = output_dir / f"checkpoint-{step}"
    (folder / "global_step1").mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"w" * 100)
    (folder / "global_step1" / "shard_0.pt").write_bytes(b"o" * 50)
    if state:
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    if manifest:
        write_manifest(folder)
    return folder


def test_manifest_lists_every_file_and_detects_missing_and_truncated_ones(tmp_path) -> None:
    folder = fake_checkpoint(tmp_path, 2)
    listed = json.loads((folder / MANIFEST).read_text())["files"]
    assert listed == {"global_step1/shard_0.pt": 50, "model.safetensors": 100, "trainer_state.json": 18}
    assert not list(folder.glob(f".{MANIFEST}*"))  # the temporary file was renamed into place
    assert missing_parts(folder) == []
    (folder / "global_step1" / "shard_0.pt").write_bytes(b"o" * 10)
    (folder / "trainer_state.json").unlink()
    assert missing_parts(folder) == ["global_step1/shard_0.pt (10 of 50 bytes)", "trainer_state.json (missing)"]
    (folder / MANIFEST).write_text("{not json")
    assert missing_parts(folder) == [f"{MANIFEST} (unreadable)"]


def test_a_checkpoint_without_manifest_counts_when_its_trainer_state_reads(tmp_path) -> None:
    assert missing_parts(fake_checkpoint(tmp_path, 2, manifest=False)) == []
    assert missing_parts(fake_checkpoint(tmp_path, 4, manifest=False, state=False)) == [
        "trainer_state.json (missing; written last by the trainer)"
    ]
    broken = fake_checkpoint(tmp_path, 6, manifest=False)
    (broken / "trainer_state.json").write_text('{"global_st')
    assert missing_parts(broken) == ["trainer_state.json (unreadable)"]


def args(output_dir: Path, resume) -> SimpleNamespace:
    return SimpleNamespace(output_dir=str(output_dir), resume_from_checkpoint=resume)


def test_resume_takes_the_newest_complete_checkpoint_and_names_what_it_skipped(tmp_path, caplog) -> None:
    for step in (2, 4, 10):
        fake_checkpoint(tmp_path, step)
    (tmp_path / "checkpoint-10" / "model.safetensors").unlink()
    fake_checkpoint(tmp_path, 12, manifest=False, state=False)
    assert newest_complete(tmp_path)[0] == tmp_path / "checkpoint-4"  # 10 sorts after 4 by number, not by name

    automatic = args(tmp_path, str(tmp_path / "checkpoint-12"))  # what the host picks: the newest folder
    with caplog.at_level("WARNING"):
        resolve_resume(automatic, given=False)
    assert automatic.resume_from_checkpoint == str(tmp_path / "checkpoint-4")
    lines = [r.getMessage() for r in caplog.records if "skipped incomplete" in r.getMessage()]
    assert len(lines) == 1 and "checkpoint-12 (" in lines[0]
    assert "checkpoint-10 (model.safetensors (missing))" in lines[0]

    newest = args(tmp_path, True)
    resolve_resume(newest, given=True)
    assert newest.resume_from_checkpoint == str(tmp_path / "checkpoint-4")

    named = args(tmp_path, str(tmp_path / "checkpoint-2"))
    resolve_resume(named, given=True)
    assert named.resume_from_checkpoint == str(tmp_path / "checkpoint-2")


def test_an_incomplete_checkpoint_named_by_path_or_none_complete_is_a_clear_error(tmp_path) -> None:
    fake_checkpoint(tmp_path, 2)
    fake_checkpoint(tmp_path, 4, manifest=False, state=False)
    with pytest.raises(SimPOArgumentError, match=r"checkpoint-4` is incomplete .*trainer_state.json \(missing.*"
                       r"the newest complete one is .*checkpoint-2"):  # fmt: skip
        resolve_resume(args(tmp_path, str(tmp_path / "checkpoint-4")), given=True)

    empty = tmp_path / "empty"
    fake_checkpoint(empty, 4, manifest=False, state=False)
    with pytest.raises(SimPOArgumentError, match="found no complete checkpoint"):
        resolve_resume(args(empty, "true"), given=True)
    fresh = args(empty, str(empty / "checkpoint-4"))
    resolve_resume(fresh, given=False)  # the host's automatic pick, with nothing complete: start over
    assert fresh.resume_from_checkpoint is None


def test_a_half_written_checkpoint_is_skipped_by_the_automatic_resume(tiny_assets, tmp_path) -> None:
    """The same command twice: the second run finds checkpoint-6 damaged and resumes from checkpoint-4."""
    common = dict(max_steps=6, save_strategy="steps", save_steps=2, logging_steps=1, do_eval=False,
                  eval_dataset=None, overwrite_output_dir=False, simpo_probe_steps=0)  # fmt: skip
    straight = base_config(tiny_assets, tmp_path / "straight", **common)
    assert run_cli(straight, tmp_path / "straight").returncode == 0
    out = tmp_path / "out"
    first = run_cli(base_config(tiny_assets, out, **common), tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    damaged = out / "checkpoint-6"
    assert (damaged / MANIFEST).is_file()
    for name in ("trainer_state.json", "scheduler.pt", "rng_state.pth"):
        (damaged / name).unlink()
    with (damaged / "optimizer.pt").open("r+b") as handle:
        handle.truncate(100)

    again = run_cli(base_config(tiny_assets, out, **common), tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Traceback" not in again.stderr
    skipped = [line for line in (again.stdout + again.stderr).splitlines() if "skipped incomplete checkpoint" in line]
    assert len(skipped) == 1 and "checkpoint-6 (optimizer.pt (100 of" in skipped[0], again.stderr[-3000:]
    assert skipped[0].endswith(f"resuming from {out / 'checkpoint-4'}")
    losses = [entry["loss"] for entry in log_history(out) if "loss" in entry]
    assert losses == pytest.approx([e["loss"] for e in log_history(tmp_path / "straight") if "loss" in e], rel=1e-5)
    assert missing_parts(damaged) == []  # written again, whole, by the resumed run
