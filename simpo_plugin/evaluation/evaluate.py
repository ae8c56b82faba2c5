"""``simpo-plugin eval``: models judged against a baseline, the way AlpacaEval 2 and Arena-Hard report them.

The path (docs/evaluation.md): ``answers`` (each model's answers: generated from a path with the sampling backends
of ``simpo-plugin pairs``, greedy by default, through the host's loader and template; or read from an AlpacaEval
``model_outputs`` file) -> ``judges`` (a reward model or function, a judge function, or a local LLM judge: P(A
beats B) per instruction) -> ``leaderboard`` (raw and length-controlled win rates with intervals, lengths,
style-controlled scores) -> ``checks`` (verifiable capability sets, generated for path models) -> ``eval_report``.
"""

import gc
import json
import math
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from llamafactory.extras import logging
from tqdm import tqdm

from ..errors import PairsConfigError
from ..pairs import check_scorer, import_callable, load_scorer
from ..recap import recapped
from ..sampling import Prompt, check_keys, instruction_prompts, load_prompts, load_sampler, parse_args, write_atomic
from .answers import ModelEntry, align, parse_models, read_difficulty, read_outputs
from .args import EvalArguments
from .cache import AnswerCache, fingerprint
from .checks import check_prompts, dropped, load_check_set, score
from .judges import FunctionJudge, Judgment, from_scores, load_llm_judge
from .leaderboard import Comparison, build_leaderboard, pairwise_table
from .metrics import Generated, summarize
from .outcome import check_answers
from .report import console_line, plot_eval, plot_win_rates, render_eval


logger = logging.get_logger("llamafactory.simpo.eval")


def model_keys(path: str, base: str | None, adapters: str | None = None) -> dict[str, str]:
    """Host keys that load ``path``: a LoRA adapter dir rides on its base model, a base with ``adapters`` (the host's
    comma list) merges them in order, anything else loads as is."""
    if adapters:
        return {"model_name_or_path": path, "adapter_name_or_path": adapters}
    config = Path(path) / "adapter_config.json"
    if not config.is_file():
        return {"model_name_or_path": path}
    base = base or json.loads(config.read_text(encoding="utf-8")).get("base_model_name_or_path")
    if not base:
        raise PairsConfigError(f"`models`: adapter `{path}` names no base model; give `model_name_or_path`.")
    return {"model_name_or_path": base, "adapter_name_or_path": path}


def instruction_of(prompt: Prompt) -> str:
    """The instruction a judge and an outputs file see: the prompt's last user turn."""
    return next(m["content"] for m in reversed(prompt.messages) if m["role"] == "user")


def generate_with(
    entry: ModelEntry, raw: dict[str, Any], check_sets: list[tuple[str, list[dict]]], cache: AnswerCache
) -> tuple[list[Prompt], list[list[Generated]], Any, dict[str, list[str]]]:
    """One model's answers to the dataset's prompts (and its greedy first answer to each check task), generated in
    this process (``backend: hf``; answers from a server come as an outputs file), or read back from ``cache`` when
    the same answers were generated before (:mod:`.cache`).

    Returns ``(prompts, answers per prompt, tokenizer, check replies per set)``.
    """
    from llamafactory.data import get_template_and_fix_tokenizer
    from llamafactory.model import load_tokenizer

    path = entry.path or ""
    keys = {k: v for k, v in raw.items() if k not in ("model_name_or_path", "adapter_name_or_path")}
    model = model_keys(path, raw.get("model_name_or_path"), entry.adapter_name_or_path)
    keys.update(model)
    settings, model_args, data_args = parse_args(keys, EvalArguments, model_path=keys["model_name_or_path"])
    tokenizer = load_tokenizer(model_args)["tokenizer"]
    template = get_template_and_fix_tokenizer(tokenizer, data_args)
    prompts = load_prompts(model_args, data_args, template, tokenizer).prompts
    key = fingerprint(model, raw, prompts, check_sets)
    saved = cache.load(key)
    if saved is not None:
        logger.info_rank0(f"`{entry.name}`: answers read back from {cache.folder} (generated before, unchanged).")
        return prompts, saved[0], tokenizer, saved[1]
    sampler = load_sampler("hf", settings, model_args, data_args)
    size = settings.chunk_size("hf")

    def run(batch: list[Prompt], label: str) -> list[list[Generated]]:
        out: list[list[Generated]] = []
        for start in tqdm(range(0, len(batch), size), desc=f"{label} ({Path(path).name})", unit="batch"):
            for samples in sampler.sample(batch[start : start + size]):
                out.append([Generated(s.text, s.tokens, not s.truncated) for s in samples])
        return out

    answers = run(prompts, "Generating")
    replies = {}
    for name, tasks in check_sets:
        replies[name] = [row[0].text for row in run(check_prompts(tasks, template, tokenizer, name), f"Checks {name}")]
    sampler = None  # noqa: F841 - free this model before the next loads
    gc.collect()
    cache.save(key, path, answers, replies)
    return prompts, answers, tokenizer, replies


def outputs_prompts(rows: list[dict[str, str]]) -> list[Prompt]:
    """Single-turn prompts from an outputs file's instructions (no template: only judges read them)."""
    return instruction_prompts([row["instruction"] for row in rows], "outputs")


def comparisons(names: list[str], baseline: str, pairwise: bool) -> list[Comparison]:
    if pairwise:
        return [(a, b) for i, a in enumerate(names) for b in names[i + 1 :]]
    return [(name, baseline) for name in names if name != baseline]


def evaluate_models(raw: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Run the evaluation for a config dict; returns each model's results (also written to ``output_dir``).

    Raises:
        simpo_plugin.errors.EmptyOutput: every answer of a model is empty (the outputs are written).
    """
    with recapped(logger):  # the run's last lines say again what it warned about
        return _evaluate_models(raw)


def _evaluate_models(raw: dict[str, Any]) -> dict[str, dict[str, Any]]:
    check_keys(raw, EvalArguments)
    settings = EvalArguments(**{k: v for k, v in raw.items() if k in EvalArguments.__dataclass_fields__})
    entries = parse_models(list(settings.models or []))
    names = [entry.name for entry in entries]
    baseline = settings.baseline or names[0]
    if baseline not in names:
        raise PairsConfigError(f"`baseline: {baseline}` is not one of the models ({', '.join(names)}).")
    paths = [entry for entry in entries if entry.path]
    model_args: Any = SimpleNamespace(trust_remote_code=bool(raw.get("trust_remote_code")), infer_dtype="auto")
    if paths:
        first = model_keys(paths[0].path or "", raw.get("model_name_or_path"), paths[0].adapter_name_or_path)
        first = first["model_name_or_path"]
        settings, model_args, _ = parse_args(raw, EvalArguments, model_path=first)
    check_sets = [load_check_set(spec) for spec in settings.checks or []]
    if check_sets and not paths:
        logger.warning_rank0("`checks` need models given as paths (their answers are generated); skipped.")
    judge: Any = None
    if settings.judge_function:  # imported once, before any model loads
        judge = FunctionJudge(import_callable(settings.judge_function, "judge_function"), settings.judge_function)
    if settings.has_scorer:
        check_scorer(settings, model_args)

    # 1. answers
    folder = settings.answers_cache or str(Path(settings.output_dir or ".") / "answers")
    cache = AnswerCache(None if folder.lower() == "none" else folder)
    prompts: list[Prompt] | None = None
    answers: dict[str, list[list[Generated]]] = {}
    replies: dict[str, dict[str, list[str]]] = {}
    tokenizer = None
    for entry in paths:
        model_prompts, answers[entry.name], model_tokenizer, replies[entry.name] = generate_with(
            entry, raw, check_sets, cache
        )
        tokenizer = tokenizer or model_tokenizer
        if prompts is None:
            prompts = model_prompts
        elif [p.key for p in model_prompts] != [p.key for p in prompts]:
            raise PairsConfigError(f"`models`: `{entry.name}` reads different prompts; give the models one template.")
    outputs = {entry.name: read_outputs(entry) for entry in entries if entry.outputs}
    if prompts is None:
        prompts = outputs_prompts(outputs[names[0]])
    instructions = [instruction_of(prompt) for prompt in prompts]
    texts = {name: align(instructions, rows, name) for name, rows in outputs.items()}
    difficulty = None
    if settings.instruction_difficulty:
        difficulty = read_difficulty(settings.instruction_difficulty, instructions)

    # 2. judge
    scores, judged, timing = {}, {}, {}
    started = time.perf_counter()
    if settings.judge_model:
        judge = load_llm_judge(settings.judge_model, settings.judge_template or raw.get("template"),
                               settings.judge_batch_size, model_args.trust_remote_code)  # fmt: skip
        tokenizer = tokenizer or judge.tokenizer
    for name, model_texts in texts.items():
        counted = [len(tokenizer.encode(t, add_special_tokens=False)) for t in model_texts] if tokenizer else None
        answers[name] = [[Generated(t, counted[i] if counted else 0, True)] for i, t in enumerate(model_texts)]
    first_texts = {name: [row[0].text for row in answers[name]] for name in names}
    if settings.has_scorer:
        scorer = load_scorer(settings, model_args, raw.get("template"))
        for name in tqdm(names, desc="Scoring", unit="model"):
            flat = scorer.score([(p, a.text) for p, row in zip(prompts, answers[name], strict=True) for a in row])
            it = iter(flat)
            scores[name] = [[next(it) for _ in row] for row in answers[name]]
        for a, b in comparisons(names, baseline, settings.pairwise):
            judged[(a, b)] = from_scores([row[0] for row in scores[a]], [row[0] for row in scores[b]])
    elif judge is not None:
        for a, b in tqdm(comparisons(names, baseline, settings.pairwise), desc="Judging", unit="comparison"):
            pairs = list(zip(prompts, first_texts[a], first_texts[b], strict=True))
            judged[(a, b)] = judge.judge(pairs)
    if judged:
        seconds = time.perf_counter() - started
        count = sum(len(v) for v in judged.values())
        forwards = count * (2 if (settings.judge_model or settings.judge_function) else 1)
        timing = {"judgments": count, "seconds": seconds, "per_second": count / seconds if seconds else 0.0,
                  "judge": judge_label(settings), "forwards": forwards}  # fmt: skip
    judge = None
    gc.collect()

    # 3. the leaderboard, health, checks
    chars = {name: [float(len(t)) for t in first_texts[name]] for name in names}
    tokens = {name: [row[0].tokens for row in answers[name]] if tokenizer else None for name in names}
    board = build_leaderboard(names, baseline, judged, chars, tokens, first_texts, difficulty,
                              settings.bootstrap_samples, settings.seed) if judged else {}  # fmt: skip
    results: dict[str, dict[str, Any]] = {}
    table = pairwise_table(names, judged) if settings.pairwise else {}
    for name in names:
        health = summarize([a for row in answers[name] for a in row])
        if tokens[name] is None:
            health.pop("length", None)
        if name in outputs:  # a file's answers carry no stop information
            health.pop("eos_rate", None)
        row = {**health, "chars": sum(chars[name]) / len(chars[name]), **board.get(name, {})}
        if scores:
            row["reward"] = sum(s for r in scores[name] for s in r) / sum(len(r) for r in scores[name])
        if table:
            row["pairwise"] = table[name]
        if replies.get(name):
            row["checks"] = {}
            for set_name, tasks in check_sets:
                outcome = score(tasks, replies[name][set_name], seed=settings.seed)
                row["checks"][set_name] = {"score": outcome["score"], "ci": [outcome["low"], outcome["high"]],
                                           "passed": outcome["passed"]}  # fmt: skip
        results[name] = row
    for name in names:
        for set_name, check in results[name].get("checks", {}).items():
            base = results[baseline].get("checks", {}).get(set_name)
            if name == baseline or base is None:
                continue
            change, interval, significant = dropped(base["passed"], check["passed"], seed=settings.seed)
            check.update(change=change, change_ci=list(interval), dropped=significant)
            if significant:
                logger.warning_rank0(
                    f"simpo-plugin: warning: `{name}` scores {check['score']:.1f} on the `{set_name}` checks against "
                    f"the baseline's {base['score']:.1f} (change {change:+.1f}, 95% interval [{interval[0]:.1f}, "
                    f"{interval[1]:.1f}]): a capability dropped."
                )
    write_outputs(settings, names, baseline, prompts, answers, scores, judged, results, check_sets, replies, timing)
    written = f"{Path(settings.output_dir or '.')}/eval_generations.jsonl"
    for warning in check_answers(answers, set(replies), settings.max_new_tokens, written):
        logger.warning_rank0(f"simpo-plugin: warning: {warning}")
    return results


def json_safe(value: Any) -> Any:
    """``value`` with every non-finite float as None (JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def judge_label(settings: EvalArguments) -> str:
    if settings.judge_model:
        return f"LLM judge `{settings.judge_model}` (logits of 1/2, both orders)"
    if settings.judge_function:
        return f"judge function `{settings.judge_function}` (both orders)"
    return f"reward `{settings.reward_model or settings.reward_function}` (Bradley-Terry)"


def write_outputs(
    settings: EvalArguments, names: list[str], baseline: str, prompts: list[Prompt],
    answers: dict[str, list[list[Generated]]], scores: dict[str, list[list[float]]],
    judged: dict[Comparison, list[Judgment]], results: dict[str, dict[str, Any]],
    check_sets: list[tuple[str, list[dict]]], replies: dict[str, dict[str, list[str]]], timing: dict[str, Any],
) -> None:  # fmt: skip
    output_dir = Path(settings.output_dir or ".")
    output_dir.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, prompt in enumerate(prompts):
        responses = {
            name: [{"text": a.text, "tokens": a.tokens, "ended": a.ended,
                    "score": scores[name][i][j] if scores else None} for j, a in enumerate(answers[name][i])]
            for name in names
        }  # fmt: skip
        lines.append(json.dumps({"index": i, "source": prompt.source, "prompt": prompt.chat(), "responses": responses},
                                ensure_ascii=False))  # fmt: skip
    write_atomic(output_dir / "eval_generations.jsonl", "".join(line + "\n" for line in lines))
    verdicts = []
    for (a, b), judgments in judged.items():
        for i, j in enumerate(judgments):
            verdicts.append(json.dumps({"index": i, "instruction": instruction_of(prompts[i]), "model_a": a,
                                        "model_b": b, "p_a": j.p_a, "p_a_first": j.p_a_first,
                                        "p_a_second": j.p_a_second}, ensure_ascii=False))  # fmt: skip
    if verdicts:
        write_atomic(output_dir / "judgments.jsonl", "".join(line + "\n" for line in verdicts))
    if any(replies.values()) and check_sets:
        rows = [{"model": name, "set": set_name, "index": k, "instruction": task["instruction"], "reply": reply,
                 "passed": results[name]["checks"][set_name]["passed"][k]}
                for name in names if replies.get(name) for set_name, tasks in check_sets
                for k, (task, reply) in enumerate(zip(tasks, replies[name][set_name], strict=True))]  # fmt: skip
        write_atomic(output_dir / "eval_checks.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    write_atomic(output_dir / "eval_results.json", json.dumps(json_safe(results), indent=2, allow_nan=False))
    generated = bool(replies)  # some model's answers were generated (not all read from files)
    report = render_eval(results, baseline, prompts, answers, settings, timing, generated)
    write_atomic(output_dir / "eval_report.md", report)
    plot_eval(results, output_dir / "eval_report.png")
    if judged:
        plot_win_rates(results, baseline, output_dir / "eval_win_rates.png")
    for name, row in results.items():  # the report's own numbers and formats (value [95% interval])
        logger.info_rank0(console_line(name, row, baseline))
    if timing:
        logger.info_rank0(f"Judged {timing['judgments']} pairs in {timing['seconds']:.1f} s "
                          f"({timing['per_second']:.2f}/s) with the {timing['judge']}.")  # fmt: skip
    written = ["eval_report.md", "eval_results.json"] + ["judgments.jsonl"] * bool(verdicts)
    logger.info_rank0(f"Written: {output_dir}/{', '.join(written)} and the answers (eval_generations.jsonl).")


__all__ = ["ModelEntry", "evaluate_models"]
