"""Logged SimPO metrics are means over pairs: the batch sizes, a short last batch and the ranks change nothing."""

import pytest
from conftest import base_config, cli_env, log_history, read_metrics, run_cli


pytestmark = pytest.mark.host  # the host's contract: `make test-lowest` runs it too


KEYS = ("rewards/accuracies", "rewards/margins", "rewards/chosen", "logps/rejected", "lengths/chosen")


def evaluate(tiny_assets, output_dir, batch: int, ranks: int = 1) -> dict[str, float]:
    config = base_config(tiny_assets, output_dir, do_train=False, max_samples=10, per_device_eval_batch_size=batch,
                         simpo_probe_steps=0)  # fmt: skip
    env = cli_env(FORCE_TORCHRUN="1", NPROC_PER_NODE=str(ranks)) if ranks > 1 else None
    result = run_cli(config, output_dir, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return read_metrics(output_dir, "eval")


def test_eval_metrics_do_not_depend_on_the_eval_batch_or_the_ranks(tiny_assets, tmp_path) -> None:
    """10 pairs in batches of 1, 3 (3+3+3+1) and 10, and over 2 ranks in batches of 3 (the sampler repeats pairs)."""
    runs = {(batch, 1): evaluate(tiny_assets, tmp_path / f"b{batch}", batch) for batch in (1, 3, 10)}
    runs[(3, 2)] = evaluate(tiny_assets, tmp_path / "ranks", 3, ranks=2)
    reference = runs[(10, 1)]
    assert 0.0 < reference["eval_rewards/accuracies"] < 1.0  # a mix, so a mis-weighted batch would show
    for run in runs.values():
        for key in ("eval_loss", *(f"eval_{key}" for key in KEYS)):
            assert run[key] == pytest.approx(reference[key], rel=1e-5, abs=1e-6), key


def test_a_logging_window_with_a_short_batch_weighs_each_pair_once(tiny_assets, tmp_path) -> None:
    """With learning_rate 0 the model never changes: the one logged window of 7 pairs (batches of 3, 3 and 1) must
    report exactly the metrics of evaluating the same 7 pairs."""
    config = base_config(tiny_assets, tmp_path / "out", dataset="simpo_synthetic", eval_dataset="simpo_synthetic",
                         max_samples=7, per_device_train_batch_size=3, per_device_eval_batch_size=7, learning_rate=0.0,
                         logging_steps=3, disable_shuffling=True, simpo_probe_steps=0)  # fmt: skip
    result = run_cli(config, tmp_path / "out")
    assert result.returncode == 0, result.stderr[-3000:]
    (window,) = [entry for entry in log_history(tmp_path / "out") if "loss" in entry]
    evaluated = read_metrics(tmp_path / "out", "eval")
    assert window["step"] == 3
    for key in KEYS:
        assert window[key] == pytest.approx(evaluated[f"eval_{key}"], rel=1e-5, abs=1e-6), key
