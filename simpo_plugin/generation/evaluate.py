"""``simpo-plugin eval``: the same held-out prompts through two or more models, side by side.

Each model (a full checkpoint or a LoRA adapter; the first is the reference, usually the start of training)
answers every prompt with the sampling backends of ``simpo-plugin pairs`` (greedy by default), through the
host's loader and template. One scorer, if configured, scores every answer. The report gives, per model, the
health metrics of :mod:`simpo_plugin.generation.metrics`, the mean reward and the win rate against the
reference, and shows the answers side by side.
"""

import gc
import json
from pathlib import Path
from typing import Any

from llamafactory.extras import logging
from tqdm import tqdm

from .args import EvalArguments, PairsConfigError, parse_args
from .eval_report import plot_eval, render_eval
from .metrics import Generated, summarize
from .pairs import load_sampler
from .prompts import load_prompts
from .sampling import resolve_backend
from .scorers import check_scorer, load_scorer
from .store import write_atomic


logger = logging.get_logger("llamafactory.simpo.eval")


def model_keys(path: str, base: str | None) -> dict[str, str]:
    """Host keys that load ``path``: a LoRA adapter dir rides on its base model, anything else loads as is."""
    config = Path(path) / "adapter_config.json"
    if not config.is_file():
        return {"model_name_or_path": path}
    base = base or json.loads(config.read_text(encoding="utf-8")).get("base_model_name_or_path")
    if not base:
        raise PairsConfigError(f"`models`: adapter `{path}` names no base model; give `model_name_or_path`.")
    return {"model_name_or_path": base, "adapter_name_or_path": path}


def generate_with(path: str, raw: dict[str, Any], backend: str) -> tuple[list, list[list[Generated]], Any]:
    """Prompts (rendered with this model's tokenizer) and each prompt's answers from one model."""
    from llamafactory.data import get_template_and_fix_tokenizer
    from llamafactory.model import load_tokenizer

    keys = {k: v for k, v in raw.items() if k not in ("model_name_or_path", "adapter_name_or_path")}
    keys.update(model_keys(path, raw.get("model_name_or_path")))
    settings, model_args, data_args = parse_args(keys, EvalArguments, model_path=keys["model_name_or_path"])
    tokenizer = load_tokenizer(model_args)["tokenizer"]
    template = get_template_and_fix_tokenizer(tokenizer, data_args)
    prompts = load_prompts(model_args, data_args, template, tokenizer).prompts
    sampler = load_sampler(backend, settings, model_args, data_args)
    answers: list[list[Generated]] = []
    size = settings.chunk_size(backend)
    for start in tqdm(range(0, len(prompts), size), desc=f"Generating ({Path(path).name})", unit="batch"):
        for samples in sampler.sample(prompts[start : start + size]):
            answers.append([Generated(s.text, s.tokens, not s.truncated) for s in samples])
    sampler = None  # noqa: F841 - free this model before the next loads
    gc.collect()
    return prompts, answers, model_args


def evaluate_models(raw: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Run the comparison for a config dict; returns each model's metrics (also written to ``output_dir``)."""
    models = EvalArguments(**{k: v for k, v in raw.items() if k in ("models", "output_dir")}).models
    first = model_keys(models[0], raw.get("model_name_or_path"))["model_name_or_path"]
    settings, model_args, _ = parse_args(raw, EvalArguments, model_path=first)
    if settings.has_scorer:
        check_scorer(settings, model_args)
    backend = resolve_backend(settings.backend)
    prompts, answers = None, {}
    for path in models:
        model_prompts, answers[path], model_args = generate_with(path, raw, backend)
        if prompts is None:
            prompts = model_prompts
        elif [p.key for p in model_prompts] != [p.key for p in prompts]:
            raise PairsConfigError(f"`models`: `{path}` reads different prompts; give its models the same template.")
    scores: dict[str, list[list[float]]] = {}
    if settings.has_scorer:
        scorer = load_scorer(settings, model_args, raw.get("template"))
        for path in models:
            flat = scorer.score([(p, a.text) for p, row in zip(prompts, answers[path], strict=True) for a in row])
            it = iter(flat)
            scores[path] = [[next(it) for _ in row] for row in answers[path]]
    reference = [s for row in scores.get(models[0], []) for s in row] or None
    results = {}
    for path in models:
        flat_scores = [s for row in scores[path] for s in row] if scores else None
        results[path] = summarize([a for row in answers[path] for a in row], flat_scores, reference)

    output_dir = Path(settings.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, prompt in enumerate(prompts):
        responses = {
            path: [{"text": a.text, "tokens": a.tokens, "ended": a.ended,
                    "score": scores[path][i][j] if scores else None} for j, a in enumerate(answers[path][i])]
            for path in models
        }  # fmt: skip
        lines.append(json.dumps({"index": i, "source": prompt.source, "prompt": prompt.chat(), "responses": responses},
                                ensure_ascii=False))  # fmt: skip
    write_atomic(output_dir / "eval_generations.jsonl", "".join(line + "\n" for line in lines))
    write_atomic(output_dir / "eval_results.json", json.dumps(results, indent=2))
    report = render_eval(results, prompts, answers, settings.show, settings)
    write_atomic(output_dir / "eval_report.md", report)
    plot_eval(results, output_dir / "eval_report.png")
    for path, metrics in results.items():
        logger.info_rank0(f"{path}: " + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
    logger.info_rank0(f"Written: {output_dir}/eval_report.md, eval_report.png, eval_generations.jsonl")
    return results
