"""Sampling backends: ``n`` responses per prompt, each reproducible from the base seed and the prompt alone.

- :class:`HFSampler`: batched ``model.generate`` with left padding (CPU, small GPUs). Sampling is done by a
  logits processor with one ``torch.Generator`` per (prompt, sample), seeded from the prompt's content: it
  applies temperature and top-p, then adds Gumbel noise (``-log E``, ``E ~ Exp(1)``), and generate's greedy
  argmax picks the token. argmax(logits / T + Gumbel) is an exact draw from softmax(logits / T) (the Gumbel-max
  trick), and since no row draws from a shared random stream, a prompt gets the same samples in any batch,
  any shard and any resumed run (up to float differences that padding can cause in the model's forward).
- :class:`~.server.ServerSampler`: OpenAI-compatible inference servers (vLLM and others), ``n`` samples per
  request with the prompt's seed.

Both stop at the template's stop tokens; a sample that never stopped within ``max_new_tokens`` is truncated.
"""

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import torch
from transformers import GenerationConfig, LogitsProcessor


if TYPE_CHECKING:
    from .prompts import Prompt


@dataclass(frozen=True)
class Sample:
    text: str
    tokens: int
    truncated: bool


class Sampler(Protocol):
    def sample(self, prompts: list["Prompt"]) -> list[list[Sample]]: ...

    def describe(self) -> str: ...


def sample_seed(seed: int, key: str, index: int = -1) -> int:
    """A 63-bit seed from the base seed, the prompt's content hash and the sample index (-1: the prompt)."""
    digest = hashlib.sha256(f"{seed}:{key}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def sample_chunks(sampler: Sampler, chunks: list[list["Prompt"]]) -> Iterator[tuple[int, list[list[Sample]]]]:
    """Yield ``(chunk index, its samples)``: the sampler's own pipelined version where it has one (servers keep
    many requests in flight across chunks), else one :meth:`Sampler.sample` call per chunk, in order."""
    if hasattr(sampler, "sample_chunks"):
        yield from sampler.sample_chunks(chunks)
        return
    for index, chunk in enumerate(chunks):
        yield index, sampler.sample(chunk)


def split_at_stop(tokens: list[int], stop_ids: set[int]) -> tuple[list[int], bool]:
    """Response tokens before the first stop token, and whether none came (the sample is truncated)."""
    for position, token in enumerate(tokens):
        if token in stop_ids:
            return tokens[:position], False
    return tokens, True


def top_p_mask(scores: torch.Tensor, top_p: float) -> torch.Tensor:
    """Set to -inf every token outside the smallest set whose probability reaches ``top_p`` (per row)."""
    if top_p >= 1.0:
        return scores
    sorted_scores, order = torch.sort(scores, dim=-1, descending=True)
    probs = sorted_scores.softmax(dim=-1)
    outside = probs.cumsum(dim=-1) - probs >= top_p  # the mass before this token already reaches top_p
    outside[..., 0] = False
    return scores.masked_fill(torch.zeros_like(outside).scatter(-1, order, outside), float("-inf"))


class SeededSampling(LogitsProcessor):
    """Logits processor that turns greedy decoding into per-row seeded sampling (see the module docstring)."""

    def __init__(self, seeds: list[int], temperature: float, top_p: float, device: torch.device) -> None:
        self.temperature, self.top_p = temperature, top_p
        self.generators = [torch.Generator(device=device).manual_seed(seed) for seed in seeds]

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.temperature == 0:
            return scores
        scores = top_p_mask(scores.float() / self.temperature, self.top_p)
        noise = torch.stack(
            [torch.empty_like(scores[0]).exponential_(generator=generator) for generator in self.generators]
        )
        return scores - noise.log()


@contextmanager
def own_generation_config(model: Any, config: GenerationConfig) -> Iterator[None]:
    """Generate with ``config`` alone: the checkpoint's defaults are swapped out, and restored afterwards (a model
    that is being trained saves its generation_config.json later)."""
    owner = model.get_base_model() if hasattr(model, "get_base_model") else model
    saved = owner.generation_config
    owner.generation_config = config
    try:
        yield
    finally:
        owner.generation_config = saved


class HFSampler:
    """Batched ``generate`` on a model loaded by the host (left padding, seeded per row)."""

    def __init__(self, model: Any, tokenizer: Any, stop_ids: list[int], settings: Any) -> None:
        self.model, self.tokenizer, self.settings = model, tokenizer, settings
        self.stop_ids = list(stop_ids)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.stop_ids[0]
        # A clean config: no sampling defaults or repetition penalties from the checkpoint's generation_config.
        self.generation_config = GenerationConfig(
            eos_token_id=self.stop_ids, pad_token_id=self.pad_id, bos_token_id=tokenizer.bos_token_id
        )

    def describe(self) -> str:
        """The backend in a few words, for the log and ``pairs_report.md``."""
        return "backend hf, batched generate in this process"

    def sample(self, prompts: list["Prompt"]) -> list[list[Sample]]:
        n, settings = self.settings.num_samples, self.settings
        rows = [prompt.ids for prompt in prompts for _ in range(n)]
        width = max(len(ids) for ids in rows)
        device = self.model.device
        input_ids = torch.tensor([[self.pad_id] * (width - len(ids)) + ids for ids in rows], device=device)
        attention_mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in rows], device=device)
        seeds = [sample_seed(settings.seed, prompt.key, j) for prompt in prompts for j in range(n)]
        processor = SeededSampling(seeds, settings.temperature, settings.top_p, device)
        # no_grad, not inference_mode: under ZeRO-3 the gathered weights would become inference tensors that the
        # next training step cannot backpropagate through (probes run inside training)
        with torch.no_grad(), own_generation_config(self.model, self.generation_config):
            output = self.model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                do_sample=False,
                use_cache=True,
                max_new_tokens=settings.max_new_tokens,
                logits_processor=[processor],
            )
        stop_ids = set(self.stop_ids)
        samples = []
        for row in output[:, width:].tolist():
            tokens, truncated = split_at_stop(row, stop_ids)
            text = self.tokenizer.decode(tokens, skip_special_tokens=True)
            samples.append(Sample(text, len(tokens), truncated))
        return [samples[i * n : (i + 1) * n] for i in range(len(prompts))]
