"""The configuration matrix: every way the host holds and launches a model, with the fast path and the plain path.

Finetuning type {full, LoRA, freeze} x launch {one process, DDP x2, ZeRO-2 x2, ZeRO-3 x2} x {the defaults (lean
head, block attention route, shared prompts), the plain path}, each a real `llamafactory-cli train` of 2 steps of 4
pairs with generation probes on and an evaluation at the end; then one row each for streaming, several eval datasets
with `eval_on_each_dataset`, prompts longer than `cutoff_len`, and ZeRO-3 with a head tied to the embedding.

Every cell must train, the fast path must give the plain path's losses and eval metrics, and the eval metrics must
not depend on the eval batch size (the two paths evaluate with different batch sizes, over 2 ranks with uneven last
batches). All cells of a finetuning type see the same 4 pairs per step (1 x 4 or 2 x 2), so each also matches the
single-process plain run. The ZeRO-3 cells also score their probes with a classifier reward model and judge them with
an LLM judge: both are loaded during the run, and must be whole models on each rank, not ZeRO-3 partitions.
"""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import transformers
from conftest import base_config, cli_env, log_history, read_metrics, run_cli

from simpo_plugin.testing import build_tiny_model, preference_rows, write_preference_dataset


DEEPSPEED = Path(__file__).resolve().parents[1] / "examples" / "deepspeed"
FINETUNING = {
    "full": {},
    "lora": {"finetuning_type": "lora", "lora_target": "all", "lora_rank": 4, "learning_rate": 5e-3},
    "freeze": {"finetuning_type": "freeze", "freeze_trainable_layers": 1, "learning_rate": 5e-3},
}
LAUNCHES = {"one": None, "ddp": None, "zero2": "ds_z2_config.json", "zero3": "ds_z3_config.json"}
PATHS = {
    "fast": {"per_device_eval_batch_size": 3},
    "plain": {"simpo_lean_logps": False, "simpo_prefix_sharing": False, "simpo_attention_route": False,
              "per_device_eval_batch_size": 5},
}  # fmt: skip
# rel: float reassociation over 2 steps of different kernels and reductions; abs: transformers 4.x logs `loss`
# rounded to 4 decimals
TOLERANCE = dict(rel=1e-4, abs=1.01e-4)
EVAL_KEYS = ("eval_loss", "eval_rewards/accuracies", "eval_rewards/margins", "eval_logps/chosen",
             "eval_lengths/chosen")  # fmt: skip
EXPECTED_LINES = ("simpo-plugin: hint:",)  # the small-batch hint; anything else the plugin prints is a finding


def run_cell(tiny_assets, output_dir: Path, ranks: int = 1, deepspeed: str | None = None, **keys) -> dict:
    per_device = 4 // ranks
    keys = {"max_samples": 32} | keys
    config = base_config(tiny_assets, output_dir, max_steps=2, logging_steps=1, per_device_train_batch_size=per_device,
                         disable_shuffling=True, simpo_probe_steps=1, simpo_probe_prompts=3,
                         simpo_probe_max_new_tokens=6, deepspeed=str(DEEPSPEED / deepspeed) if deepspeed else None,
                         **keys)  # fmt: skip
    env = cli_env(FORCE_TORCHRUN="1", NPROC_PER_NODE=str(ranks)) if ranks > 1 else None
    result = run_cli(config, output_dir, env=env)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    lines = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if "simpo-plugin:" in line and "simpo-plugin: recap" not in line
    ]  # the recap restates lines checked here
    history = log_history(output_dir)
    generations = output_dir / "generations.jsonl"
    records = [json.loads(line) for line in generations.read_text().splitlines()] if generations.exists() else []
    return {
        "answers": [(r["index"], r["response"]) for r in sorted(records, key=lambda r: r["index"]) if r["step"] == 0],
        "lines": [line for line in lines if not any(expected in line for expected in EXPECTED_LINES)],
        "losses": [entry["loss"] for entry in history if "loss" in entry],
        "probes": [entry["step"] for entry in history if "probe/length" in entry],
        "probe_logs": [entry for entry in history if "probe/length" in entry],
        "records": [r for r in records if r["step"] == 0],
        "eval": read_metrics(output_dir, "eval") if (output_dir / "eval_results.json").exists() else {},
        "log": result.stderr,
    }


@pytest.fixture(scope="module")
def probe_reward_models(tiny_reward_model, tiny_value_head_model) -> dict[str, Path]:
    """The probe reward model of each finetuning type's ZeRO-3 cells: a classifier, or a value head (LoRA's)."""
    return {"full": tiny_reward_model, "freeze": tiny_reward_model, "lora": tiny_value_head_model}


@pytest.fixture(scope="module")
def cells(tiny_assets, probe_reward_models, tmp_path_factory) -> dict:
    """Runs lazily: each cell once per session, whichever test asks first."""
    root, done = tmp_path_factory.mktemp("matrix"), {}

    def get(finetuning: str, launch: str, path: str) -> dict:
        key = (finetuning, launch, path)
        if key not in done:
            ranks = 1 if launch == "one" else 2
            scorers = {"simpo_probe_reward_model": str(probe_reward_models[finetuning]),
                       "simpo_probe_judge": str(tiny_assets["model"])}  # fmt: skip
            keys = FINETUNING[finetuning] | PATHS[path] | (scorers if launch == "zero3" else {})
            done[key] = run_cell(tiny_assets, root / "-".join(key), ranks, LAUNCHES[launch], **keys)
        return done[key]

    return get


HOST_DPO_FAILS = {
    ("lora", "zero3"): "the host's own `stage: dpo` fails the same way on llamafactory 0.9.4 with transformers 4.x "
    "(the lr scheduler's step: 'zip() argument 2 is longer than argument 1' under ZeRO-3 with LoRA)",
}


# xdist runs each finetuning type's cells on one worker, the types side by side (conftest.work_unit). The lowest-host
# suite (`-m host`) runs one cell per finetuning type that, with the single-process
# references, covers every launcher but ZeRO-2 (test_deepspeed.py runs ZeRO-2 there); `make test` runs them all.
LOWEST_HOST_CELLS = {("full", "zero3"), ("lora", "one"), ("freeze", "ddp")}
CELLS = [
    pytest.param(finetuning, launch, id=f"{launch}-{finetuning}",
                 marks=[pytest.mark.host] if (finetuning, launch) in LOWEST_HOST_CELLS else [])
    for finetuning in FINETUNING for launch in LAUNCHES
]  # fmt: skip


@pytest.mark.parametrize(("finetuning", "launch"), CELLS)
def test_the_fast_path_trains_like_the_plain_path(cells, probe_reward_models, finetuning: str, launch: str) -> None:
    if (finetuning, launch) in HOST_DPO_FAILS and int(transformers.__version__.split(".")[0]) < 5:
        pytest.skip(HOST_DPO_FAILS[finetuning, launch])
    fast, plain = cells(finetuning, launch, "fast"), cells(finetuning, launch, "plain")
    reference = cells(finetuning, "one", "plain")
    for cell in (fast, plain):
        assert cell["lines"] == [], cell["lines"]  # no fallback, no feature turned off, no warning
        assert cell["probes"] == [0, 1, 2]
        # Greedy answers of the initial weights: the same whoever holds them (under ZeRO-3, gathered once per probe)
        assert cell["answers"] == reference["answers"] and len(cell["answers"]) == 3
        assert len(cell["losses"]) == 2
        assert cell["losses"] == pytest.approx(reference["losses"], **TOLERANCE)
        for key in EVAL_KEYS:  # eval batch 3 vs 5 (2 ranks: uneven last batches), fast vs plain, 2 ranks vs 1
            assert cell["eval"][key] == pytest.approx(reference["eval"][key], **TOLERANCE), key
        if launch == "zero3":
            assert_whole_probe_scorers(cell, probe_reward_models[finetuning])


def assert_whole_probe_scorers(cell: dict, reward_model: Path) -> None:
    """Every probe step logs the reward and the judge's win rate, and each answer's score is the one the reward
    model gives it whole, in this process (a rank left with a partitioned copy fails or scores differently)."""
    from simpo_plugin.pairs.scorers import load_scorer
    from simpo_plugin.sampling.prompts import Prompt

    for entry in cell["probe_logs"]:
        assert {"probe/reward", "probe/win_rate", "probe/judge_win_rate"} <= set(entry), entry
    assert cell["probe_logs"][0]["probe/judge_win_rate"] == 0.5  # the start against itself
    assert all(0.0 < entry["probe/judge_win_rate"] < 1.0 for entry in cell["probe_logs"][1:])
    records = cell["records"]
    prompts = [Prompt(r["key"], [{"role": "user", "content": r["prompt"]}], "", "", [], r["source"]) for r in records]
    settings = SimpleNamespace(reward_function=None, reward_model=str(reward_model), reward_template=None,
                               reward_batch_size=8)  # fmt: skip
    scorer = load_scorer(settings, SimpleNamespace(trust_remote_code=False, infer_dtype="auto"), "default")
    alone = scorer.score([(prompt, r["response"]) for prompt, r in zip(prompts, records, strict=True)])
    assert [r["score"] for r in records] == pytest.approx(alone, rel=1e-5)
    assert cell["probe_logs"][0]["probe/reward"] == pytest.approx(sum(alone) / len(alone), rel=1e-5)


@pytest.mark.host
def test_streaming_trains_like_the_same_data_read_at_once(tiny_assets, cells, tmp_path) -> None:
    """A shuffle buffer of one reads the stream in file order, as `disable_shuffling` reads the dataset at once."""
    streamed = run_cell(tiny_assets, tmp_path / "stream", streaming=True, dataloader_num_workers=1, buffer_size=1,
                        max_samples=None)  # fmt: skip
    assert streamed["lines"] == [] and streamed["probes"] == [0, 1, 2]
    assert streamed["losses"] == pytest.approx(cells("full", "one", "fast")["losses"], **TOLERANCE)
    assert set(EVAL_KEYS) <= set(streamed["eval"])


@pytest.mark.host
def test_each_eval_dataset_keeps_its_own_metrics(tiny_assets, cells, tmp_path) -> None:
    each = run_cell(tiny_assets, tmp_path / "each", eval_dataset=["simpo_synthetic_eval", "simpo_synthetic"],
                    eval_on_each_dataset=True, per_device_eval_batch_size=7)  # fmt: skip
    assert each["lines"] == []
    alone = cells("full", "one", "fast")["eval"]
    for key in EVAL_KEYS:
        name = key.removeprefix("eval_")
        assert each["eval"][f"eval_simpo_synthetic_eval_{name}"] == pytest.approx(alone[key], **TOLERANCE), key
        assert f"eval_simpo_synthetic_{name}" in each["eval"] and key not in each["eval"]
    assert each["eval"]["eval_simpo_synthetic_loss"] != pytest.approx(alone["eval_loss"])  # another dataset


@pytest.mark.host
def test_prompts_beyond_cutoff_len_train_and_probes_take_those_that_fit(tiny_assets, tmp_path) -> None:
    rows = preference_rows(24, seed=5)
    for row in rows[::2]:
        row["instruction"] = " ".join([row["instruction"]] * 10)  # every other prompt is over the cutoff
    data = write_preference_dataset(tmp_path / "data", "mixed_lengths", rows)
    run = run_cell(tiny_assets, tmp_path / "out", dataset="mixed_lengths", dataset_dir=str(data), eval_dataset=None,
                   do_eval=False, cutoff_len=64)  # fmt: skip
    assert len(run["lines"]) == 1 and "`cutoff_len: 64` cuts the prompt of 12 of 24 training pairs" in run["lines"][0]
    assert run["probes"] == [0, 1, 2] and len(run["losses"]) == 2
    generations = [json.loads(line) for line in (tmp_path / "out" / "generations.jsonl").read_text().splitlines()]
    assert {g["prompt"] for g in generations} <= {row["instruction"] for row in rows[1::2]}


@pytest.mark.host
def test_zero3_with_a_head_tied_to_the_embedding(tiny_assets, tmp_path) -> None:
    from transformers import AutoTokenizer

    tied = tmp_path / "tied"
    build_tiny_model(tied, AutoTokenizer.from_pretrained(tiny_assets["model"]), tie_word_embeddings=True)
    common = dict(model_name_or_path=str(tied), do_eval=False, eval_dataset=None, deepspeed="ds_z3_config.json")
    fast = run_cell(tiny_assets, tmp_path / "fast", ranks=2, **common)
    plain = run_cell(tiny_assets, tmp_path / "plain", ranks=2, **common, **PATHS["plain"])
    assert fast["lines"] == [] and plain["lines"] == []
    assert fast["losses"] == pytest.approx(plain["losses"], **TOLERANCE)
