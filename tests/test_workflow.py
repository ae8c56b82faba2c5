"""End to end through the real `llamafactory-cli train` in a subprocess, on the tiny local model."""

import json
import re
from pathlib import Path

import pytest
import torch
from conftest import base_config, cli_env, log_history, read_metrics, run_cli
from safetensors.torch import load_file


# Every test here is the host's contract (`host`: `make test-lowest` runs it too) but two, unmarked: the lowest-host
# suite launches DDP and compares the fast path with the plain one through test_matrix.py's cells instead
# (docs/testing.md, "Markers").


TRAIN_KEYS = {
    "loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
    "logps/chosen", "logps/rejected", "lengths/chosen", "lengths/rejected",
}  # fmt: skip


def assert_ok(result) -> None:
    assert result.returncode == 0, result.stderr[-4000:]


@pytest.fixture(scope="module")
def full_run(tiny_assets, tmp_path_factory):
    """Held-out accuracy of the initial model, then a full fine-tuning run (2 epochs) with plots."""
    root = tmp_path_factory.mktemp("full")
    before = run_cli(base_config(tiny_assets, root / "before", do_train=False), root / "before")
    assert_ok(before)
    config = base_config(
        tiny_assets, root / "out", num_train_epochs=2.0, eval_strategy="steps", eval_steps=16, plot_loss=True
    )
    after = run_cli(config, root / "out")
    assert_ok(after)
    return {"before": read_metrics(root / "before", "eval"), "out": root / "out", "result": after}


@pytest.mark.host
def test_full_training_learns_the_preference(full_run) -> None:
    before = full_run["before"]["eval_rewards/accuracies"]
    after = read_metrics(full_run["out"], "eval")["eval_rewards/accuracies"]
    print(f"held-out rewards/accuracies: before={before:.3f} after={after:.3f}")
    assert 0.25 <= before <= 0.75
    assert after >= 0.9
    assert read_metrics(full_run["out"], "eval")["eval_rewards/margins"] > full_run["before"]["eval_rewards/margins"]


@pytest.mark.host
def test_full_training_logs_metrics_and_resolved_config(full_run) -> None:
    history = log_history(full_run["out"])
    train_logs = [entry for entry in history if "loss" in entry]
    eval_logs = [entry for entry in history if "eval_loss" in entry]
    assert train_logs and TRAIN_KEYS <= set(train_logs[0])
    assert eval_logs and {f"eval_{key}" for key in TRAIN_KEYS - {"loss"}} <= set(eval_logs[0])
    assert all(entry["lengths/chosen"] > 1 for entry in train_logs)
    log = full_run["result"].stdout + full_run["result"].stderr
    assert log.count("SimPO objective: beta=2, gamma=1 (gamma/beta=0.5), loss_type=sigmoid") == 1
    assert "ref_model" not in log
    for name in ("loss", "simpo_loss", "simpo_accuracies", "simpo_margins", "simpo_logps", "simpo_lengths"):
        assert (full_run["out"] / f"training_{name}.png").stat().st_size > 10_000, name


@pytest.mark.host
def test_full_model_changes_and_reloads(full_run, tiny_assets) -> None:
    from transformers import AutoModelForCausalLM

    initial = load_file(str(tiny_assets["model"] / "model.safetensors"))
    trained = load_file(str(full_run["out"] / "model.safetensors"))
    unchanged = [name for name, tensor in initial.items() if torch.equal(tensor, trained[name])]
    assert not unchanged
    model = AutoModelForCausalLM.from_pretrained(full_run["out"])
    assert torch.equal(model.lm_head.weight, trained["lm_head.weight"])


@pytest.mark.host
def test_lora_adapter_trains_and_reloads(tiny_assets, tmp_path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    config = base_config(
        tiny_assets, tmp_path / "lora", finetuning_type="lora", lora_target="all", lora_rank=8,
        learning_rate=5.0e-3, num_train_epochs=2.0,
    )  # fmt: skip
    assert_ok(run_cli(config, tmp_path / "lora"))
    accuracy = read_metrics(tmp_path / "lora", "eval")["eval_rewards/accuracies"]
    print(f"LoRA held-out rewards/accuracies: {accuracy:.3f}")
    assert accuracy >= 0.9
    adapter = load_file(str(tmp_path / "lora" / "adapter_model.safetensors"))
    assert any("lora_B" in name and tensor.abs().sum() > 0 for name, tensor in adapter.items())
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_assets["model"]), tmp_path / "lora")
    assert model.peft_config["default"].r == 8


def test_two_process_ddp_logs_the_same_metrics(tiny_assets, tmp_path) -> None:
    config = base_config(tiny_assets, tmp_path / "ddp", max_steps=4, logging_steps=2, per_device_train_batch_size=4)
    result = run_cli(config, tmp_path / "ddp", env=cli_env(FORCE_TORCHRUN="1", NPROC_PER_NODE="2"))
    assert_ok(result)
    assert "world size: 2" in result.stdout + result.stderr
    train_logs = [entry for entry in log_history(tmp_path / "ddp") if "loss" in entry]
    assert len(train_logs) == 2 and TRAIN_KEYS <= set(train_logs[0])


@pytest.mark.host
def test_dpo_is_untouched_by_the_plugin(tiny_assets, tmp_path) -> None:
    """The host's own `stage: dpo` + `pref_loss: simpo` logs the same numbers with the plugin on and off."""
    histories = []
    for name, env in (("on", cli_env()), ("off", cli_env(SIMPO_PLUGIN_DISABLE="1"))):
        config = base_config(
            tiny_assets, tmp_path / name, stage="dpo", pref_loss="simpo", max_steps=2, logging_steps=1
        )
        assert_ok(run_cli(config, tmp_path / name, env=env))
        histories.append([{k: v for k, v in e.items() if "runtime" not in k and "per_second" not in k}
                          for e in log_history(tmp_path / name)])  # fmt: skip
    assert histories[0] == histories[1]
    assert "logits/chosen" in histories[0][0]  # the host's metric set, not ours


@pytest.mark.host
def test_disabled_plugin_leaves_stage_unknown(tiny_assets, tmp_path) -> None:
    result = run_cli(base_config(tiny_assets, tmp_path / "o"), tmp_path, env=cli_env(SIMPO_PLUGIN_DISABLE="1"))
    assert result.returncode != 0 and "Unknown task: simpo" in result.stderr
    with_keys = base_config(tiny_assets, tmp_path / "k", simpo_gamma_beta_ratio=0.5)  # as docs/simpo.md says
    result = run_cli(with_keys, tmp_path, env=cli_env(SIMPO_PLUGIN_DISABLE="1"))
    assert result.returncode != 0 and "Some keys are not used by the HfArgumentParser" in result.stderr


def _bad_dataset(dataset_dir: Path, name: str, rows: list, ranking: bool = True) -> None:
    info_path = dataset_dir / "dataset_info.json"
    info = json.loads(info_path.read_text())
    columns = {"prompt": "instruction", "query": "input", "chosen": "chosen", "rejected": "rejected"}
    info[name] = {"file_name": f"{name}.json", "ranking": ranking, "columns": columns}
    if not ranking:
        info[name]["columns"] = {"prompt": "instruction", "response": "output"}
    info_path.write_text(json.dumps(info))
    (dataset_dir / f"{name}.json").write_text(json.dumps(rows))


@pytest.mark.parametrize(
    ("name", "rows", "ranking", "message"),
    [
        ("sft_only", [{"instruction": "hi", "output": "yo"}] * 4, False, "is not a preference dataset"),
        ("no_pairs", [{"instruction": "hi", "input": "", "output": "yo"}] * 4, True, "names the column 'chosen'"),
        ("empty", [], True, "is empty"),
    ],
)
@pytest.mark.host
def test_bad_datasets_fail_with_one_clear_line(tiny_assets, tmp_path, name, rows, ranking, message) -> None:
    dataset_dir = tmp_path / "data"
    dataset_dir.mkdir()
    (dataset_dir / "dataset_info.json").write_text("{}")
    _bad_dataset(dataset_dir, name, rows, ranking)
    config = base_config(tiny_assets, tmp_path / "o", dataset=name, dataset_dir=str(dataset_dir), eval_dataset=None,
                         do_eval=False)  # fmt: skip
    result = run_cli(config, tmp_path)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("simpo-plugin: error:")]
    assert len(errors) == 1 and f"`{name}`" in errors[0] and message in errors[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr


@pytest.mark.host
def test_bad_key_fails_before_loading_anything(tiny_assets, tmp_path) -> None:
    result = run_cli(base_config(tiny_assets, tmp_path / "o", pref_beta=-2.0), tmp_path)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "simpo-plugin: error: `pref_beta` must be > 0, got -2.0" in result.stderr


def test_fast_paths_train_exactly_like_the_plain_path(tiny_assets, tmp_path) -> None:
    """Lean log-probs, prefix sharing, padding-free packing and gradient buffers change cost, not the trajectory."""
    variants = {
        "plain": {"simpo_lean_logps": False, "simpo_prefix_sharing": False, "simpo_attention_route": False},
        "default": {},  # one packed row, shared prompts, the block attention route
        "shared_rows": {"simpo_attention_route": False},  # the previous default: one row per pair, dense masks
        "padding_free": {"simpo_attention_route": False, "simpo_padding_free": True},
        "gradients_freed": {"simpo_cpu_gradient_buffers": False},  # torch's default: each step's own gradients
    }
    losses, logs = {}, {}
    for name, keys in variants.items():
        config = base_config(tiny_assets, tmp_path / name, max_steps=6, logging_steps=1, do_eval=False, **keys)
        result = run_cli(config, tmp_path / name)
        assert_ok(result)
        logs[name] = result.stdout + result.stderr
        losses[name] = [entry["loss"] for entry in log_history(tmp_path / name) if "loss" in entry]
    assert len(losses["plain"]) == 6
    weights = {name: load_file(tmp_path / name / "model.safetensors") for name in ("default", "gradients_freed")}
    assert weights["default"].keys() == weights["gradients_freed"].keys()
    buffered = r"CPU training: gradients of (\d+) tensors kept in buffers allocated once"
    assert re.findall(buffered, logs["default"]) == [str(len(weights["default"]))]  # one per trainable tensor
    assert not re.findall(buffered, logs["gradients_freed"])
    for key, tensor in weights["default"].items():  # the buffers hold the same gradients: bit-equal weights
        assert torch.equal(tensor, weights["gradients_freed"][key]), key
    for name in ("default", "shared_rows", "padding_free"):
        # rel: float reassociation over a 6-step trajectory; abs: transformers 4.x logs `loss` rounded to 4 decimals
        assert losses[name] == pytest.approx(losses["plain"], rel=1e-4, abs=1.01e-4), name


MISTAKES = [
    ({"simpo_gama": 1.0}, "Unknown key `simpo_gama` (did you mean `simpo_gamma`?) in {config}"),
    ({"learnin_rate": 1.0}, "Unknown key `learnin_rate` (did you mean `learning_rate`?) in {config}"),
    ({"stage": "simpoo", "simpo_gamma_beta_ratio": 0.5},
     "Unknown stage `simpoo` in {config} (did you mean `simpo`?)"),
    ({"dataset": "simpo_synthtic"},
     "Dataset `simpo_synthtic` (`dataset`) is not registered in {info} (it registers: "),
    ({"dataset_dir": "{tmp}/nowhere"},
     "there is no {tmp}/nowhere/dataset_info.json (`dataset_dir: {tmp}/nowhere`)"),
    ({"max_samples": 0}, "`max_samples: 0` leaves no rows to train on"),
    ({"max_samples": "12,4"}, "`max_samples` must be an integer, got '12,4'."),  # was the host's raw TypeError
    ({"new_special_tokens": "<think>"}, "`new_special_tokens` was renamed `add_special_tokens` in llamafactory "
     "0.9.3; write `add_special_tokens` instead"),  # not "did you mean `init_special_tokens`?"
    ({"simpo_probe_checks": "arithmetic,jsonformat"},
     "`simpo_probe_checks: jsonformat` is neither a bundled set (arithmetic, constraints, json_format) nor a file."),
]  # fmt: skip


@pytest.mark.parametrize(("overrides", "message"), MISTAKES)
@pytest.mark.host
def test_config_mistakes_name_the_key_the_file_and_the_closest_name(tiny_assets, tmp_path, overrides, message) -> None:
    overrides = {key: value.replace("{tmp}", str(tmp_path)) if isinstance(value, str) else value
                 for key, value in overrides.items()}  # fmt: skip
    result = run_cli(base_config(tiny_assets, tmp_path / "o", **overrides), tmp_path)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("simpo-plugin: error:")]
    expected = message.format(config=tmp_path / "config.yaml", tmp=tmp_path,
                              info=Path(tiny_assets["dataset_dir"]).resolve() / "dataset_info.json")  # fmt: skip
    assert len(errors) == 1 and expected in errors[0], result.stderr[-2000:]
    if overrides.get("dataset") == "simpo_synthtic":
        assert "did you mean `simpo_synthetic`" in errors[0]


@pytest.mark.host
def test_keys_the_stage_ignores_are_named_with_what_it_does_instead(tiny_assets, tmp_path) -> None:
    config = base_config(tiny_assets, tmp_path / "o", packing=True, temperature=0.7, max_steps=1,
                         do_eval=False, eval_dataset=None, simpo_probe_steps=0)  # fmt: skip
    result = run_cli(config, tmp_path)
    assert_ok(result)
    log = result.stdout + result.stderr
    assert log.count("simpo-plugin: `packing: True` is ignored by `stage: simpo`: preference pairs are never") == 1
    assert log.count("`temperature: 0.7` is ignored by `stage: simpo`: the generation probes decode greedily") == 1


@pytest.mark.host
def test_a_bundled_dataset_is_reachable_by_name(tiny_assets, tmp_path) -> None:
    """The README's config for a pip user: `dataset: simpo_demo` with no dataset_info.json of one's own."""
    config = base_config(tiny_assets, tmp_path / "o", dataset="simpo_demo", dataset_dir="data", eval_dataset=None,
                         do_eval=False, max_steps=2, logging_steps=1, simpo_probe_steps=0)  # fmt: skip
    result = run_cli(config, tmp_path)
    assert_ok(result)
    assert "Datasets simpo_demo: the plugin's bundled" in result.stdout + result.stderr
    assert len([e for e in log_history(tmp_path / "o") if "loss" in e]) == 2
