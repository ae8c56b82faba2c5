"""No host sync in a training step: the layout is built by the collator on the CPU, the empty-response check comes
with it, the NaN guard and the preemption agreement read their verdicts a step later, and the host's NaN filter
is off. Counted per optimizer step by tests/sync_counter.py in real runs (one process, and DDP on 2 ranks)."""

import json
import socket
import sys
from pathlib import Path

import pytest
from conftest import base_config, cli_env, run_command


COUNTER = Path(__file__).with_name("sync_counter.py")
LOGGING_STEPS = 3
# where a sync may happen on a logging step: the host reads the loss and grad norm, the stage its pooled metrics
LOGGING_SITES = {"_maybe_log_save_evaluate", "log", "store_flos", "_finalize_training"}
FIRST_STEP_SITES = {"_lean", "agreed"}  # the one-time lean check against the model's logits, agreed by the ranks
CASES = {
    "route": {},
    "route-workers": {"dataloader_num_workers": 1},  # the plan reaches the DataLoader's worker process
    "shared-masks-lora": {"simpo_attention_route": False, "finetuning_type": "lora", "lora_target": "all",
                          "lora_rank": 4},
    "plain": {"simpo_lean_logps": False, "simpo_prefix_sharing": False, "simpo_attention_route": False},
}  # fmt: skip
# transformers' own, in every forward of padded rows under sdpa: `padding_mask.all()` decides whether the causal mask
# can be skipped. The packed layouts have no padding mask, so only the plain path (the host's padded rows) pays it.
MODEL_SITES = {"plain": {"_ignore_causal_mask_sdpa"}}


def count(tiny_assets, tmp_path: Path, ranks: int = 1, **keys) -> list[list[dict[str, int]]]:
    config = base_config(tiny_assets, tmp_path / "out", max_steps=6, logging_steps=LOGGING_STEPS, do_eval=False,
                         simpo_probe_steps=0, save_strategy="no", per_device_train_batch_size=4 // ranks,
                         **keys)  # fmt: skip
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps({k: v for k, v in config.items() if v is not None}))
    argv = [str(COUNTER), str(config_path), str(tmp_path)]
    if ranks > 1:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        torchrun = Path(sys.executable).with_name("torchrun")
        argv = [str(torchrun), "--nproc_per_node", str(ranks), "--master_port", str(port), *argv]
    result = run_command(argv, tmp_path, cli_env())
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return [json.loads((tmp_path / f"syncs_rank{rank}.json").read_text()) for rank in range(ranks)]


def assert_budget(steps: list[dict[str, int]], every_step: set[str] = frozenset()) -> None:
    assert len(steps) == 6
    for number, calls in enumerate(steps, start=1):
        sites = {site.rsplit(" ", 1)[-1] for site in calls}
        allowed = (
            set(every_step)
            | (LOGGING_SITES if number % LOGGING_STEPS == 0 else set())
            | (FIRST_STEP_SITES if number == 1 else set())
        )
        assert sites <= allowed, (number, calls)


@pytest.mark.parametrize("case", CASES)
def test_a_steady_step_waits_for_the_device_only_to_log(tiny_assets, tmp_path, case: str) -> None:
    (steps,) = count(tiny_assets, tmp_path, **CASES[case])
    assert_budget(steps, MODEL_SITES.get(case, set()))
    if case not in MODEL_SITES:
        assert steps[1] == {} and steps[3] == {}


def test_two_ranks_agree_on_preemption_and_non_finite_gradients_without_waiting(tiny_assets, tmp_path) -> None:
    for steps in count(tiny_assets, tmp_path, ranks=2):
        assert_budget(steps)
