"""``simpo-plugin pairs``: sample, score, select; the paper's on-policy data recipe as one resumable run.

Prompts are cut into fixed chunks of ``batch_size`` (by position, the same in every run, shard and resume);
each chunk is sampled in one generation call and scored in ``reward_batch_size`` batches, and its records are
appended to ``parts/`` as soon as it is done. Shards take every ``num_shards``-th chunk. A run without shards
reads every part, computes what is missing, selects the pairs and writes the outputs; because each prompt's
samples depend only on the base seed and the prompt, that equals an uninterrupted single run.
"""

import gc
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llamafactory.extras import logging
from tqdm import tqdm

from ..errors import PairsConfigError
from ..recap import recapped
from ..sampling import (
    PartStore,
    Prompt,
    PromptSet,
    Sample,
    Sampler,
    check_server,
    ids_digest,
    load_prompts,
    load_sampler,
    sample_chunks,
    shard_tag,
    write_atomic,
)
from .args import PairsArguments, fingerprint, parse_pairs_args
from .outcome import check_outcome
from .outputs import candidate_lines, pair_row, write_dataset
from .report import PairsStats, plot_report, render_markdown
from .scorers import check_scorer, load_scorer
from .selection import select_pair


logger = logging.get_logger("llamafactory.simpo.pairs")


def chunks_of(num_prompts: int, size: int, num_shards: int = 1, shard_index: int = 0) -> list[range]:
    """This shard's fixed chunks of prompt indices."""
    starts = range(0, num_prompts, size)
    return [range(s, min(s + size, num_prompts)) for k, s in enumerate(starts) if k % num_shards == shard_index]


def sample_record(index: int, prompt: Prompt, samples: list[Sample]) -> dict[str, Any]:
    return {
        "index": index,
        "key": prompt.key,
        "prompt_tokens": len(prompt.ids),
        "prompt_digest": ids_digest(prompt.ids),
        "samples": [{"text": s.text, "tokens": s.tokens, "truncated": s.truncated} for s in samples],
    }


def run_phase(desc: str, todo: list[range], work: Callable[[range], None], unit: str = "prompt") -> float:
    """Run ``work`` on each chunk under a progress bar with ETA; returns the seconds it took."""
    start = time.perf_counter()
    with tqdm(total=sum(len(chunk) for chunk in todo), desc=desc, unit=unit, dynamic_ncols=True) as bar:
        for chunk in todo:
            work(chunk)
            bar.update(len(chunk))
    return time.perf_counter() - start


def sample_missing(store: PartStore, prompts: list[Prompt], mine: list[range], load: Callable[[], Sampler]) -> str:
    """Sample every prompt of ``mine`` without saved samples; a chunk's records are saved as soon as it is done.
    Returns the rate line (samples/s and tokens/s), or "" when nothing was missing."""
    done = store.read("samples")
    for index, record in done.items():
        if index < len(prompts) and record["key"] != prompts[index].key:
            raise_changed(store, index, prompts[index])
    todo = [chunk for chunk in mine if any(i not in done for i in chunk)]
    if not todo:
        return ""
    sampler = load()
    backend = sampler.describe()
    counts = {"samples": 0, "tokens": 0}
    start = time.perf_counter()
    chunks = None
    try:
        with tqdm(total=sum(map(len, todo)), desc="Sampling", unit="prompt", dynamic_ncols=True) as bar:
            chunks = sample_chunks(sampler, [[prompts[i] for i in chunk] for chunk in todo])
            for k, results in chunks:
                chunk = todo[k]
                store.append("samples", [sample_record(i, prompts[i], s) for i, s in zip(chunk, results, strict=True)
                                         if i not in done])  # fmt: skip
                counts["samples"] += sum(len(s) for s in results)
                counts["tokens"] += sum(x.tokens for s in results for x in s)
                seconds = max(time.perf_counter() - start, 1e-9)
                bar.set_postfix_str(f"{counts['samples'] / seconds:.2f} samples/s, {counts['tokens'] / seconds:.1f} "
                                    "tokens/s", refresh=False)  # fmt: skip
                bar.update(len(chunk))
    finally:
        if chunks is not None:
            chunks.close()  # a server sampler's generator stops its retries and its thread pool
        if hasattr(sampler, "close"):
            sampler.close()
        sampler = None  # free the policy before the reward model loads
        gc.collect()
    seconds = time.perf_counter() - start
    rate = f"{counts['samples']} samples in {seconds:.1f} s ({counts['samples'] / seconds:.2f} samples/s, "
    rate += f"{counts['tokens'] / seconds:.1f} tokens/s; {backend})"
    logger.info_rank0(f"Sampled {rate}")
    return rate


def raise_changed(store: PartStore, index: int, prompt: Prompt) -> None:
    raise PairsConfigError(
        f"`{store.root.parent}` holds samples of a different prompt at index {index} (now {prompt.source}): the "
        "dataset changed since they were made; use a new `output_dir` or `overwrite_output_dir: true`."
    )


def score_missing(store: PartStore, prompts: list[Prompt], mine: list[range], load: Callable[[], Any]) -> None:
    samples, done = store.read("samples"), store.read("scores")
    todo = [chunk for chunk in mine if any(i not in done for i in chunk)]
    if not todo:
        return
    scorer = load()

    def work(chunk: range) -> None:
        items = [(prompts[i], s["text"]) for i in chunk for s in samples[i]["samples"]]
        flat = iter(scorer.score(items))
        records = [{"index": i, "scores": [next(flat) for _ in samples[i]["samples"]]} for i in chunk]
        store.append("scores", [record for record in records if record["index"] not in done])

    run_phase("Scoring", todo, work)
    scorer = None  # noqa: F841 - free the reward model's memory now
    gc.collect()


def select_and_write(
    output_dir: Path, settings: PairsArguments, prompt_set: PromptSet, store: PartStore
) -> PairsStats:
    samples, scores = store.read("samples"), store.read("scores")
    stats = PairsStats(prompt_set.rows, prompt_set.unusable, prompt_set.duplicates, prompt_set.too_long)
    rows, candidates = [], []
    for index, prompt in enumerate(prompt_set.prompts):
        record, values = samples[index], scores[index]["scores"]
        texts = [s["text"] for s in record["samples"]]
        truncated = [s["truncated"] for s in record["samples"]]
        selection = select_pair(texts, values, truncated, settings.min_score_gap, settings.drop_truncated)
        stats.count_cut(selection.chosen_truncated, selection.rejected_truncated)  # only set on a kept pair
        candidates += candidate_lines(index, prompt, record, values, selection)
        stats.prompts += 1
        stats.samples += len(texts)
        stats.truncated_samples += sum(truncated)
        stats.empty_samples += sum(not text.strip() for text in texts)
        stats.non_finite += [f"{prompt.source} (sample {j}: {v})" for j, v in enumerate(values)
                             if not math.isfinite(v)]  # fmt: skip
        if not selection.kept:
            stats.drops[selection.drop_reason] += 1
            continue
        chosen, rejected = record["samples"][selection.chosen], record["samples"][selection.rejected]
        rows.append(pair_row(prompt, chosen["text"], rejected["text"], (values[selection.chosen],
                                                                        values[selection.rejected])))  # fmt: skip
        stats.gaps.append(selection.gap)
        stats.chosen_tokens.append(chosen["tokens"])
        stats.rejected_tokens.append(rejected["tokens"])
        stats.longest_pair = max(stats.longest_pair, len(prompt.ids) + max(chosen["tokens"], rejected["tokens"]) + 1)
    write_dataset(output_dir, settings.dataset_name, rows)
    write_atomic(output_dir / "candidates.jsonl", "".join(line + "\n" for line in candidates))
    return stats


def build_pairs(raw: dict[str, Any]) -> PairsStats | None:
    """Run the whole recipe for a config dict; returns the stats, or None for a shard (no outputs yet).

    Raises:
        simpo_plugin.errors.EmptyOutput: no pair was kept (the outputs are written; the message says why).
    """
    with recapped(logger):  # the run's last lines say again what it warned about
        return _build_pairs(raw)


def _build_pairs(raw: dict[str, Any]) -> PairsStats | None:
    settings, model_args, data_args = parse_pairs_args(raw)
    backend = settings.resolved_backend
    output_dir = Path(settings.output_dir)
    store = PartStore(output_dir, shard_tag(settings.num_shards, settings.shard_index))
    check_scorer(settings, model_args)
    check_server(settings, model_args, backend)
    store.prepare(fingerprint(settings, model_args, data_args, backend), settings.overwrite_output_dir)

    from llamafactory.data import get_template_and_fix_tokenizer
    from llamafactory.model import load_tokenizer

    tokenizer = load_tokenizer(model_args)["tokenizer"]
    template = get_template_and_fix_tokenizer(tokenizer, data_args)
    prompt_set = load_prompts(model_args, data_args, template, tokenizer)
    if settings.prompt_slice is not None:
        taken = settings.prompt_range(len(prompt_set.prompts))
        if not taken:
            raise PairsConfigError(
                f"`prompt_slice: {settings.prompt_slice}` takes no prompt of the {len(prompt_set.prompts)} the "
                "dataset holds."
            )
        logger.info_rank0(f"`prompt_slice: {settings.prompt_slice}`: prompts {taken.start}-{taken.stop - 1} of "
                          f"{len(prompt_set.prompts)}")  # fmt: skip
        prompt_set.prompts = prompt_set.prompts[taken.start : taken.stop]
    prompts = prompt_set.prompts
    mine = chunks_of(len(prompts), settings.chunk_size(backend), settings.num_shards, settings.shard_index)
    logger.info_rank0(
        f"{len(prompts)} unique prompts from {prompt_set.rows} rows; this run takes {sum(map(len, mine))} of them "
        f"({settings.num_samples} samples each, backend {backend})"
    )
    rate = sample_missing(
        store, prompts, mine, lambda: load_sampler(backend, settings, model_args, data_args, output_dir)
    )
    score_missing(store, prompts, mine, lambda: load_scorer(settings, model_args, data_args.template))
    if settings.num_shards > 1:
        logger.info_rank0(
            f"Shard {settings.shard_index + 1}/{settings.num_shards} done. When every shard is done, run the same "
            "command without `num_shards`/`shard_index` to merge them and write pairs.json."
        )
        return None

    stats = select_and_write(output_dir, settings, prompt_set, store)
    stats.sampling_rate = rate
    write_atomic(output_dir / "pairs_report.md", render_markdown(stats, settings.dataset_name))
    plot_report(stats, output_dir / "pairs_report.png")
    logger.info_rank0(f"{stats.summary()}. Written: {output_dir}/pairs.json, pairs_report.md, candidates.jsonl")
    if warning := stats.length_warning():
        logger.warning_rank0(f"simpo-plugin pairs: {warning}")
    if warning := check_outcome(stats, settings, f"{output_dir}/pairs_report.md, candidates.jsonl"):
        logger.warning_rank0(f"simpo-plugin pairs: {warning}")
    logger.info_rank0(f"Train on them with `dataset_dir: {output_dir}` and `dataset: {settings.dataset_name}`.")
    return stats
