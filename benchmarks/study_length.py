"""Offline length ablation: does SimPO without length normalization exploit response length?

SimPO (Meng, Xia, Chen 2024, Sec. 4.4) reports that a reward from SUMMED instead of mean log-probs lets the
model exploit length. This study checks that on a synthetic task that a tiny local Llama learns on CPU in
minutes, with a programmatic judge that scores content and length separately (details in docs/study.md):

- a prompt names a topic; a correct answer repeats the topic, then "helpful" words, a wrong one "unhelpful"
  words. Words follow a Markov chain with two successors each, so every word after the first costs log 2 nats
  that no model can save: as in real text, a longer answer has a lower summed log-prob, while its mean
  log-prob does not depend on length;
- one SFT model (the host's ``stage: sft``) learns the format from answers of both kinds and of every length;
- preference pairs (chosen = correct, rejected = wrong) tie length to the label in three conditions:
  ``independent`` (length says nothing), ``rejected-longer`` and ``chosen-longer``.

Every method starts from the same SFT model and trains on the same pairs, steps, learning rate and batch through
the real ``llamafactory-cli train``. Each saved model then answers held-out prompts greedily (the host's prompt
format, checked against the host's own tokenization), the judge scores the answers, and the held-out pairs are
re-scored to correlate each method's reward margin with the pair's length difference (the paper's Fig. 2b).

Run ``python benchmarks/study_length.py`` (3 conditions x 4 methods x 2 seeds: ~7 min on 2 shared CPU cores) or
``--quick`` (one condition, SimPO and SimPO w/o LN, one seed, a hotter and shorter run: ~40 s). Output goes to
``--out`` (default: ``$TMPDIR/simpo_study_length``, outside the repository).
"""

import argparse
import json
import math
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any


BIN_DIR = Path(sys.executable).parent
DEFAULT_OUT = Path(tempfile.gettempdir()) / "simpo_study_length"

TOPICS = "river mountain garden planet music engine bridge forest market ocean city library winter robot".split()
GOOD = "helpful clear kind accurate polite useful honest careful friendly precise thorough gentle".split()
BAD = "rude wrong lazy vague careless useless sloppy hostile confusing boring dismissive false".split()
SFT_DATASET = "study_sft"
DPO_BETA = 0.1  # the host's default `pref_beta` for `stage: dpo`
SIMPO_BETA = 2.0  # the plugin's default under `stage: simpo`

# The methods: keys each adds to the shared config. Same init, data, steps, lr and batch for all.
METHODS: dict[str, dict[str, Any]] = {
    "simpo": {"stage": "simpo"},  # beta 2, gamma/beta 0.5: the plugin's defaults
    "simpo-sum": {"stage": "simpo", "simpo_length_normalization": False},  # ablation: summed log-probs
    "simpo-gamma0": {"stage": "simpo", "simpo_gamma": 0.0},  # ablation: no target margin
    "dpo": {"stage": "dpo", "pref_loss": "sigmoid"},  # the host's DPO: beta 0.1, reference = the SFT model
}
LABELS = {"sft": "SFT init", "simpo": "SimPO", "simpo-sum": "SimPO w/o LN", "simpo-gamma0": "SimPO γ=0", "dpo": "DPO"}

# Answer lengths in content words, uniform in [lo, hi]; tokens = words + 2 (topic and period).
SFT_WORDS = (2, 12)
CONDITIONS: dict[str, tuple[tuple[int, int], tuple[int, int]]] = {  # name: (chosen, rejected)
    "independent": ((2, 12), (2, 12)),
    "rejected-longer": ((2, 6), (8, 12)),
    "chosen-longer": ((8, 12), (2, 6)),
}
QUICK_CONDITIONS = ("rejected-longer",)
QUICK_METHODS = ("simpo", "simpo-sum")


@dataclass(frozen=True)
class Budget:
    """Everything that sets the size of the study; the same for every method and condition."""

    n_sft: int = 2048
    n_train: int = 1024
    n_eval: int = 128
    sft_epochs: float = 3.0
    sft_lr: float = 3.0e-3
    pref_steps: int = 64  # one epoch of n_train pairs, as the paper trains; see docs/study.md for 128 steps
    lr: float = 5.0e-5
    batch: int = 16
    hidden: int = 128
    good_share_sft: float = 0.3  # correct answers in the SFT data: the SFT model answers wrongly, greedily
    max_new_tokens: int = 32  # > the longest answer (14 tokens): a run-on answer shows as unterminated
    checkpoints: int = 8  # evenly spaced points of each preference run that are scored
    seed: int = 0


# One condition, two methods, one seed, a short and hot run: the test suite's smoke test (< 1 min), not a result.
QUICK = Budget(n_sft=768, n_train=256, n_eval=64, sft_epochs=2.0, pref_steps=24, lr=2.0e-4, checkpoints=3)


# ------------------------------------------------------------------------------------------------------------------
# Task and judge
# ------------------------------------------------------------------------------------------------------------------


def chain(rng: random.Random, words: list[str], n: int) -> list[str]:
    """``n`` words of a Markov chain from ``words[0]``, successors i+1 and i+5: log 2 nats per word after the first."""
    i, out = 0, []
    for _ in range(n):
        out.append(words[i])
        i = (i + rng.choice((1, 5))) % len(words)
    return out


def answer(rng: random.Random, topic: str, good: bool, words: tuple[int, int]) -> str:
    return " ".join([topic, *chain(rng, GOOD if good else BAD, rng.randint(*words))]) + "."


def prompt_for(topic: str) -> str:
    return f"Tell me about the {topic}."


def topic_of(prompt: str) -> str:
    return prompt.removeprefix("Tell me about the ").removesuffix(".")


def sft_rows(n: int, good_share: float, seed: int) -> list[dict[str, str]]:
    """Alpaca SFT rows: the answer format, correct and wrong content, every length."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        topic = rng.choice(TOPICS)
        good = rng.random() < good_share
        rows.append({"instruction": prompt_for(topic), "input": "", "output": answer(rng, topic, good, SFT_WORDS)})
    return rows


def pair_rows(n: int, condition: str, seed: int) -> list[dict[str, str]]:
    """Alpaca ranking rows: chosen = correct content, rejected = wrong content, lengths as ``condition`` says."""
    chosen_words, rejected_words = CONDITIONS[condition]
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        topic = rng.choice(TOPICS)
        rows.append(
            {
                "instruction": prompt_for(topic),
                "input": "",
                "chosen": answer(rng, topic, True, chosen_words),
                "rejected": answer(rng, topic, False, rejected_words),
            }
        )
    return rows


@dataclass(frozen=True)
class Verdict:
    """The judge's reading of one answer: content right or not, and its length."""

    correct: bool
    words: int  # content words after the topic
    terminated: bool


def judge(topic: str, text: str, terminated: bool = True) -> Verdict:
    """Correct = the prompt's topic, at least one word, only helpful words, a final period and an EOS.

    Length is reported, never judged: the judge has no length preference, so length and content stay separable.
    """
    body = text.strip()
    words = body.removesuffix(".").split()
    content = words[1:]
    correct = (
        terminated
        and body.endswith(".")
        and bool(content)
        and words[0] == topic
        and all(word in GOOD for word in content)
    )
    return Verdict(correct=correct, words=len(content), terminated=terminated)


# ------------------------------------------------------------------------------------------------------------------
# Assets and training through the real CLI
# ------------------------------------------------------------------------------------------------------------------


def register_dataset(dataset_dir: Path, name: str, rows: list[dict[str, str]], ranking: bool) -> None:
    """Write ``rows`` as ``name.json`` and register them in ``dataset_info.json`` (alpaca columns)."""
    from simpo_plugin.testing import write_preference_dataset

    if ranking:
        write_preference_dataset(dataset_dir, name, rows)
        return
    dataset_dir.mkdir(parents=True, exist_ok=True)
    (dataset_dir / f"{name}.json").write_text(json.dumps(rows, indent=1), encoding="utf-8")
    info_path = dataset_dir / "dataset_info.json"
    info = json.loads(info_path.read_text(encoding="utf-8")) if info_path.exists() else {}
    info[name] = {
        "file_name": f"{name}.json",
        "columns": {"prompt": "instruction", "query": "input", "response": "output"},
    }
    info_path.write_text(json.dumps(info, indent=2), encoding="utf-8")


def build_assets(root: Path, budget: Budget, conditions: list[str]) -> dict[str, Any]:
    """SFT data and, per condition, train/held-out pairs; a local tokenizer and a randomly initialised Llama."""
    from simpo_plugin.testing import build_tiny_model, build_tokenizer, template_corpus

    dataset_dir = root / "data"
    sft = sft_rows(budget.n_sft, budget.good_share_sft, seed=budget.seed)
    register_dataset(dataset_dir, SFT_DATASET, sft, ranking=False)
    pairs = {}
    for index, condition in enumerate(conditions):
        train = pair_rows(budget.n_train, condition, seed=budget.seed + 10 + index)
        held_out = pair_rows(budget.n_eval, condition, seed=budget.seed + 20 + index)
        register_dataset(dataset_dir, f"study_{condition}", train, ranking=True)
        register_dataset(dataset_dir, f"study_{condition}_eval", held_out, ranking=True)
        pairs[condition] = {"train": train, "held_out": held_out}
    # The SFT answers hold every word, so one tokenizer (one token per word) and one SFT model serve all conditions.
    corpus = [value for row in sft for value in row.values() if value] + template_corpus()
    tokenizer = build_tokenizer(root / "init", corpus, vocab_size=512)
    shape = dict(hidden_size=budget.hidden, intermediate_size=2 * budget.hidden, max_position_embeddings=128)
    build_tiny_model(root / "init", tokenizer, seed=budget.seed, **shape)
    return {"init": root / "init", "dataset_dir": dataset_dir, "pairs": pairs}


def cli_env() -> dict[str, str]:
    """The child CLI's environment: this venv's bin first (the host starts `torchrun` by name), offline."""
    env = dict(os.environ)
    env["PATH"] = f"{BIN_DIR}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("DISABLE_VERSION_CHECK", "1")
    # A tiny model gains nothing from threads, and OpenMP threads that spin-wait on shared cores cost 30x.
    env.setdefault("OMP_NUM_THREADS", "1")
    env.pop("SIMPO_PLUGIN_DISABLE", None)
    return env


def train(config: dict[str, Any], workdir: Path) -> str:
    """Run ``llamafactory-cli train`` on ``config``; returns its output, raises with the tail on failure."""
    import yaml

    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "config.yaml"
    config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
    result = subprocess.run(
        [str(BIN_DIR / "llamafactory-cli"), "train", str(config_path)],
        cwd=workdir,
        env=cli_env(),
        capture_output=True,
        text=True,
    )
    log = result.stdout + result.stderr
    (workdir / "train.log").write_text(log, encoding="utf-8")
    if result.returncode != 0:
        raise RuntimeError(f"llamafactory-cli train failed in {workdir} (rc {result.returncode}):\n{log[-3000:]}")
    return log


def common_config(model: Path, dataset_dir: Path, output_dir: Path, budget: Budget) -> dict[str, Any]:
    return {
        "model_name_or_path": str(model),
        "do_train": True,
        "finetuning_type": "full",
        "dataset_dir": str(dataset_dir),
        "template": "default",
        "cutoff_len": 64,
        "output_dir": str(output_dir),
        "overwrite_output_dir": True,
        "per_device_train_batch_size": budget.batch,
        "per_device_eval_batch_size": budget.n_eval,  # one eval batch: the logged means are over all pairs
        "lr_scheduler_type": "cosine",
        "warmup_ratio": 0.1,
        "logging_steps": 8,
        "save_strategy": "no",
        "report_to": "none",
        "seed": 42,
    }


def sft_config(assets: dict[str, Any], output_dir: Path, budget: Budget) -> dict[str, Any]:
    config = common_config(assets["init"], assets["dataset_dir"], output_dir, budget)
    config.update(stage="sft", dataset=SFT_DATASET, learning_rate=budget.sft_lr, num_train_epochs=budget.sft_epochs)
    return config


def method_config(
    method: str, condition: str, sft_dir: Path, assets: dict[str, Any], output_dir: Path, budget: Budget
) -> dict[str, Any]:
    config = common_config(sft_dir, assets["dataset_dir"], output_dir, budget)
    config.update(
        dataset=f"study_{condition}",
        eval_dataset=f"study_{condition}_eval",
        do_eval=True,
        learning_rate=budget.lr,
        max_steps=budget.pref_steps,
        # checkpoints (weights only) and held-out metrics along the way: the drift, not only its end point
        save_strategy="steps",
        save_steps=budget.pref_steps // budget.checkpoints,
        save_only_model=True,
        eval_strategy="steps",
        eval_steps=budget.pref_steps // budget.checkpoints,
        **METHODS[method],
    )
    return config


# ------------------------------------------------------------------------------------------------------------------
# Scoring: greedy generation with the host's prompt format, and per-pair rewards
# ------------------------------------------------------------------------------------------------------------------


def load(model_dir: Path, tokenizer_dir: Path | None = None) -> tuple[Any, Any, Any]:
    """Model (fp32, eval), tokenizer and the host's `default` template, as the host would load them."""
    import torch
    from llamafactory.data import get_template_and_fix_tokenizer
    from llamafactory.hparams import DataArguments
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir or model_dir))
    template = get_template_and_fix_tokenizer(tokenizer, DataArguments(template="default"))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    return model, tokenizer, template


def encode(template: Any, tokenizer: Any, prompt: str, response: str = "") -> tuple[list[int], list[int]]:
    """(prompt ids, response ids) exactly as the host's pairwise processor builds them (``encode_oneturn``)."""
    messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
    return template.encode_oneturn(tokenizer, messages)


def check_host_encoding(log: str, template: Any, tokenizer: Any, row: dict[str, str]) -> None:
    """The host prints its first tokenized training pair; our prompt + chosen answer must be exactly those ids."""
    match = re.search(r"chosen_input_ids:\n(\[[\d, ]*\])", log)
    if match is None:
        raise RuntimeError("the training log shows no `chosen_input_ids` to check the prompt format against")
    host_ids = json.loads(match.group(1))
    prompt, response = encode(template, tokenizer, row["instruction"], row["chosen"])
    if prompt + response != host_ids or encode(template, tokenizer, row["instruction"])[0] != prompt:
        raise RuntimeError(f"our prompt format differs from the host's: {prompt + response} != {host_ids}")


def generate(
    model: Any, tokenizer: Any, template: Any, prompts: list[str], max_new: int
) -> list[tuple[str, int, bool]]:
    """Greedy answers: (text, tokens before EOS, whether EOS came within ``max_new`` tokens)."""
    import torch

    encoded = [encode(template, tokenizer, prompt)[0] for prompt in prompts]
    width, pad, eos = max(map(len, encoded)), tokenizer.pad_token_id, tokenizer.eos_token_id
    input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids in encoded])  # left padding
    attention_mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in encoded])
    with torch.no_grad():
        out = model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            do_sample=False,
            max_new_tokens=max_new,
            eos_token_id=eos,
            pad_token_id=pad,
        )
    answers = []
    for row in out[:, width:].tolist():
        terminated = eos in row
        tokens = row[: row.index(eos)] if terminated else row
        answers.append((tokenizer.decode(tokens, skip_special_tokens=True), len(tokens), terminated))
    return answers


def response_logps(model: Any, tokenizer: Any, template: Any, rows: list[dict[str, str]], key: str):
    """Summed log-prob and length (tokens, EOS and newline included, as the trainers count) of ``row[key]``."""
    import torch

    sums, lengths = [], []
    with torch.no_grad():
        for row in rows:
            prompt, response = encode(template, tokenizer, row["instruction"], row[key])
            ids = torch.tensor([prompt + response])
            logps = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), dim=-1)
            targets = ids[0, len(prompt) :]
            sums.append(logps[len(prompt) - 1 :].gather(-1, targets[:, None]).sum().item())
            lengths.append(len(response))
    return sums, lengths


def pair_scores(model: Any, tokenizer: Any, template: Any, rows: list[dict[str, str]]) -> dict[str, list[float]]:
    chosen, chosen_len = response_logps(model, tokenizer, template, rows, "chosen")
    rejected, rejected_len = response_logps(model, tokenizer, template, rows, "rejected")
    return {"chosen": chosen, "rejected": rejected, "chosen_len": chosen_len, "rejected_len": rejected_len}


def reward_margins(method: str, scores: dict[str, list[float]], ref: dict[str, list[float]]) -> list[float]:
    """Each pair's margin r_w - r_l under the reward that ``method`` trains (gamma not subtracted)."""
    out = []
    for i in range(len(scores["chosen"])):
        win, lose = scores["chosen"][i], scores["rejected"][i]
        if method == "dpo":
            out.append(DPO_BETA * ((win - ref["chosen"][i]) - (lose - ref["rejected"][i])))
        elif method == "simpo-sum":
            out.append(SIMPO_BETA * (win - lose))
        else:
            out.append(SIMPO_BETA * (win / scores["chosen_len"][i] - lose / scores["rejected_len"][i]))
    return out


def spearman(x: list[float], y: list[float]) -> float:
    from scipy.stats import spearmanr

    if len(set(x)) < 2 or len(set(y)) < 2:
        return float("nan")  # no length spread (or no margin spread): correlation undefined
    return float(spearmanr(x, y).statistic)


def generation_stats(model: Any, tokenizer: Any, template: Any, held_out: list[dict[str, str]], budget: Budget):
    """Greedy answers to the held-out prompts, judged; lengths in tokens against the chosen (reference) answers."""
    answers = generate(model, tokenizer, template, [row["instruction"] for row in held_out], budget.max_new_tokens)
    verdicts = [
        judge(topic_of(row["instruction"]), text, ended)
        for row, (text, _, ended) in zip(held_out, answers, strict=True)
    ]
    ref_tokens = [len(encode(template, tokenizer, row["instruction"], row["chosen"])[1]) - 2 for row in held_out]
    gen_tokens = [n for _, n, _ in answers]  # the reference counts the same way: no EOS, no trailing newline
    return {
        "gen_len": mean(gen_tokens),
        "ref_len": mean(ref_tokens),
        "len_ratio": mean(gen_tokens) / mean(ref_tokens),
        "gen_words": mean([v.words for v in verdicts]),
        "judge_acc": mean([float(v.correct) for v in verdicts]),
        "terminated": mean([float(v.terminated) for v in verdicts]),
        "examples": [text for text, _, _ in answers[:3]],
    }


def pair_stats(method: str, scores: dict[str, list[float]], ref: dict[str, list[float]]) -> dict[str, float]:
    """Held-out accuracy and margin of the reward ``method`` trains, recomputed, and its correlation with length."""
    margins = reward_margins(method, scores, ref)
    length_diff = [w - r for w, r in zip(scores["chosen_len"], scores["rejected_len"], strict=True)]
    return {
        "own_acc": mean([float(m > 0) for m in margins]),
        "own_margin": mean(margins),
        "rho_margin_len": spearman(margins, length_diff),
    }


def trajectory(run_dir: Path, held_out: list[dict[str, str]], start: dict[str, Any], budget: Budget):
    """Generation stats at every saved checkpoint after ``start`` (step 0, the SFT model), with the host's eval."""
    history = json.loads((run_dir / "trainer_state.json").read_text(encoding="utf-8"))["log_history"]
    evals = {entry["step"]: entry for entry in history if "eval_rewards/accuracies" in entry}
    keys = ("len_ratio", "judge_acc", "terminated", "gen_len", "eval_acc")
    points = [{"step": 0, **{key: start[key] for key in keys}}]
    checkpoints = sorted(run_dir.glob("checkpoint-*"), key=lambda path: int(path.name.split("-")[1]))
    for checkpoint in checkpoints:
        step = int(checkpoint.name.split("-")[1])
        stats = generation_stats(*load(checkpoint, tokenizer_dir=run_dir), held_out, budget)
        point = {"step": step, **{key: stats[key] for key in ("len_ratio", "judge_acc", "terminated", "gen_len")}}
        if step in evals:
            point.update(
                eval_acc=evals[step]["eval_rewards/accuracies"], eval_margin=evals[step]["eval_rewards/margins"]
            )
        points.append(point)
        shutil.rmtree(checkpoint)  # scored; the final model stays in run_dir
    return points


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


# ------------------------------------------------------------------------------------------------------------------
# Study
# ------------------------------------------------------------------------------------------------------------------


def run_seed(out_dir: Path, budget: Budget, conditions: list[str], methods: list[str], progress: Any):
    """One replicate: data, init and SFT from ``budget.seed``, then every (condition, method) trained and scored."""
    assets = build_assets(out_dir / "assets", budget, conditions)
    sft_dir = out_dir / "runs" / "sft"
    train(sft_config(assets, sft_dir, budget), sft_dir)
    progress(f"seed {budget.seed}: SFT model trained")

    rows: list[dict[str, Any]] = []
    for condition in conditions:
        held_out = assets["pairs"][condition]["held_out"]
        model, tokenizer, template = load(sft_dir)
        sft_row = generation_stats(model, tokenizer, template, held_out, budget)
        sft_scores = pair_scores(model, tokenizer, template, held_out)
        rows.append({"seed": budget.seed, "condition": condition, "method": "sft", **sft_row})
        for method in methods:
            run_dir = out_dir / "runs" / condition / method
            log = train(method_config(method, condition, sft_dir, assets, run_dir, budget), run_dir)
            model, tokenizer, template = load(run_dir)
            if not rows[1:]:  # the first preference run: our prompt format must be the host's
                check_host_encoding(log, template, tokenizer, assets["pairs"][condition]["train"][0])
            metrics = json.loads((run_dir / "eval_results.json").read_text(encoding="utf-8"))
            row = {
                "seed": budget.seed,
                "condition": condition,
                "method": method,
                "eval_acc": metrics["eval_rewards/accuracies"],
                "eval_margin": metrics["eval_rewards/margins"],
                **generation_stats(model, tokenizer, template, held_out, budget),
                **pair_stats(method, pair_scores(model, tokenizer, template, held_out), sft_scores),
                # step 0: the SFT model, whose held-out accuracy under this method's reward is computed here
                "trajectory": trajectory(
                    run_dir,
                    held_out,
                    {**sft_row, "eval_acc": pair_stats(method, sft_scores, sft_scores)["own_acc"]},
                    budget,
                ),
            }
            rows.append(row)
            progress(f"seed {budget.seed} {condition:16s} {LABELS[method]:13s} {summary(row)}")
    return rows


def aggregate(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean over seeds of every number (trajectories step by step), with the per-seed values kept in ``seeds``."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["condition"], row["method"]), []).append(row)
    out = []
    for (condition, method), group in groups.items():
        numeric = [key for key, value in group[0].items() if isinstance(value, float | int) and key != "seed"]
        row: dict[str, Any] = {"condition": condition, "method": method}
        row.update({key: mean([member[key] for member in group]) for key in numeric})
        row["seeds"] = {key: [member[key] for member in group] for key in ("len_ratio", "judge_acc")}
        if "trajectory" in group[0]:
            row["trajectory"] = [
                {key: mean([member["trajectory"][i][key] for member in group]) for key in point}
                for i, point in enumerate(group[0]["trajectory"])
            ]
        out.append(row)
    return out


def run_study(
    out_dir: Path,
    quick: bool = False,
    conditions: list[str] | None = None,
    methods: list[str] | None = None,
    seeds: int | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """Train and score every (seed, condition, method); write results.json, table.md and study_length.png."""
    import torch

    torch.set_num_threads(1)  # the tiny model runs fastest single-threaded, and so do the other tenants' jobs
    budget = replace(QUICK if quick else Budget(), **overrides)
    conditions = conditions or list(QUICK_CONDITIONS if quick else CONDITIONS)
    methods = methods or list(QUICK_METHODS if quick else METHODS)
    seeds = seeds or (1 if quick else 2)
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    def progress(message: str) -> None:
        print(f"[{time.perf_counter() - start:5.0f}s] {message}", flush=True)

    per_seed: list[dict[str, Any]] = []
    for seed in range(budget.seed, budget.seed + seeds):
        per_seed += run_seed(out_dir / f"seed-{seed}", replace(budget, seed=seed), conditions, methods, progress)
    rows = aggregate(per_seed)

    results = {
        "conditions": {
            name: {"chosen_words": CONDITIONS[name][0], "rejected_words": CONDITIONS[name][1]} for name in conditions
        },
        "sft_words": SFT_WORDS,
        "budget": asdict(budget),
        "seeds": seeds,
        "methods": {name: METHODS[name] for name in methods},
        "rows": rows,
        "per_seed": per_seed,
        "seconds": time.perf_counter() - start,
    }
    (out_dir / "results.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    table = format_table(rows)
    (out_dir / "table.md").write_text(table + "\n", encoding="utf-8")
    plot(per_seed, rows, conditions, out_dir / "study_length.png")
    print(table)
    return results


def summary(row: dict[str, Any]) -> str:
    return (
        f"acc {row['eval_acc']:.3f} margin {row['eval_margin']:7.2f} rho {row['rho_margin_len']:+.2f} "
        f"len {row['gen_len']:5.2f}/{row['ref_len']:5.2f} judge {row['judge_acc']:.3f} ended {row['terminated']:.2f}"
    )


def spread(row: dict[str, Any], key: str, spec: str) -> str:
    """The mean, and each seed's value in brackets when there are several."""
    values = row.get("seeds", {}).get(key, [])
    seeds = f" ({', '.join(format(value, spec) for value in values)})" if len(values) > 1 else ""
    return format(row[key], spec) + seeds


def format_table(rows: list[dict[str, Any]]) -> str:
    """Markdown, one line per (condition, method), means over seeds; '-' where a metric has no meaning (SFT)."""

    def cell(row: dict[str, Any], key: str, spec: str) -> str:
        return format(row[key], spec) if key in row else "-"

    lines = [
        "| condition | method | held-out acc | margin | ρ(margin, Δlen) | gen len | ref len | len ratio | judge acc "
        "| ended |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['condition']} | {LABELS[row['method']]} | {cell(row, 'eval_acc', '.3f')} | "
            f"{cell(row, 'eval_margin', '.2f')} | {cell(row, 'rho_margin_len', '+.2f')} | {row['gen_len']:.2f} | "
            f"{row['ref_len']:.2f} | {spread(row, 'len_ratio', '.2f')} | {spread(row, 'judge_acc', '.2f')} | "
            f"{row['terminated']:.2f} |"
        )
    return "\n".join(lines)


def plot(per_seed: list[dict[str, Any]], rows: list[dict[str, Any]], conditions: list[str], path: Path) -> None:
    """Greedy length, judge accuracy and held-out preference accuracy along training: a column per condition,
    a colour per method; thick lines are seed means, thin ones single seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("len_ratio", "greedy length / chosen length"),
        ("judge_acc", "judge accuracy of greedy answers"),
        ("eval_acc", "held-out preference accuracy"),
    ]
    colors = {method: f"C{i}" for i, method in enumerate(METHODS)}
    # SimPO and SimPO γ=0 often coincide (see docs/study.md): distinct dashes and markers keep both visible
    styles = {"simpo": ("-", "o"), "simpo-sum": ("-", "s"), "simpo-gamma0": ("--", "^"), "dpo": (":", "D")}
    fig, axes = plt.subplots(
        len(panels), len(conditions), figsize=(max(6.4, 4.8 * len(conditions)), 3.0 * len(panels))
    )
    axes = axes.reshape(len(panels), len(conditions))
    for col, condition in enumerate(conditions):
        chosen, rejected = CONDITIONS[condition]
        axes[0, col].set_title(
            f"{condition}\nchosen {chosen[0]}-{chosen[1]} words, rejected {rejected[0]}-{rejected[1]}"
        )
        for (key, ylabel), ax in zip(panels, axes[:, col], strict=True):
            for row in per_seed + rows:
                if row["condition"] != condition or "trajectory" not in row:
                    continue
                points = [point for point in row["trajectory"] if key in point]
                single = "seed" in row
                linestyle, marker = styles[row["method"]]
                ax.plot(
                    [point["step"] for point in points],
                    [point[key] for point in points],
                    color=colors[row["method"]],
                    linestyle=linestyle,
                    linewidth=0.7 if single else 1.8,
                    alpha=0.3 if single else 1.0,
                    marker=None if single else marker,
                    markersize=4,
                    label=None if single else LABELS[row["method"]],
                )
            if key == "len_ratio":
                ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
            else:
                ax.set_ylim(-0.03, 1.03)
            ax.set_xlabel("preference training step (0 = SFT model)")
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    fig.suptitle("SimPO length ablation, synthetic task, tiny Llama: held-out prompts and pairs")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output directory (default: {DEFAULT_OUT})")
    parser.add_argument("--quick", action="store_true", help="reduced budget, one condition, SimPO vs w/o LN")
    parser.add_argument("--conditions", nargs="+", choices=list(CONDITIONS), default=None)
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=None)
    parser.add_argument("--lr", type=float, default=None, help="preference learning rate (all methods)")
    parser.add_argument("--steps", type=int, default=None, help="preference steps (all methods)")
    parser.add_argument("--seeds", type=int, default=None, help="replicates (data, init, SFT); default 2, quick 1")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    overrides = {key: value for key, value in (("lr", args.lr), ("pref_steps", args.steps)) if value is not None}
    results = run_study(args.out, args.quick, args.conditions, args.methods, args.seeds, **overrides)
    finite = all(math.isfinite(v) for row in results["rows"] for v in row.values() if isinstance(v, float))
    print(f"results.json, table.md and study_length.png in {args.out} ({results['seconds']:.0f} s)")
    return 0 if finite else 1


if __name__ == "__main__":
    sys.exit(main())
