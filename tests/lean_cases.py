"""Tiny models and synthetic collated batches shared by the lean-path tests and the distributed check."""

import torch
from transformers import (
    CohereConfig,
    CohereForCausalLM,
    Gemma2Config,
    Gemma2ForCausalLM,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Phi3Config,
    Phi3ForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from simpo_plugin.lean import LeanConfig, SequenceLogps


VOCAB = 97
IGNORE_INDEX = -100


def tiny_model(kind: str = "llama", seed: int = 0, attn: str = "sdpa") -> torch.nn.Module:
    """Random tiny causal LMs covering the head variants the lean path must handle."""
    torch.manual_seed(seed)
    common = dict(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, pad_token_id=0,
    )  # fmt: skip
    if kind in ("llama", "tied"):
        model = LlamaForCausalLM(LlamaConfig(**common, tie_word_embeddings=kind == "tied"))
    elif kind == "gemma2":  # final-logit soft-capping; small cap so tanh matters
        model = Gemma2ForCausalLM(Gemma2Config(**common, head_dim=8, final_logit_softcapping=5.0))
    elif kind == "cohere":  # a logit scale applied after the head: the lean path must detect and fall back
        model = CohereForCausalLM(CohereConfig(**common, logit_scale=0.5))
    else:
        raise ValueError(kind)
    model.config._attn_implementation = attn
    return model.float().eval()


# Families with sliding windows, each with a window (4 tokens) shorter than the batches' sequences (up to 17).
WINDOWED = ("mistral", "qwen2", "gemma2", "gemma3", "phi3")


def windowed_model(kind: str, window: int | None = 4, attn: str = "sdpa", seed: int = 0) -> torch.nn.Module:
    """A tiny model of a family whose attention slides; ``window=None`` gives the same weights without a window.

    Mistral and Phi-3 slide in every layer; Qwen2 (``use_sliding_window``, ``max_window_layers=1``), Gemma-2 and
    Gemma-3 mix full and sliding layers, so their masks go per layer type.
    """
    torch.manual_seed(seed)
    common = dict(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, pad_token_id=0,
    )  # fmt: skip
    big = 10_000  # a window no sequence reaches: the same layer types, no effect
    if kind == "mistral":
        model = MistralForCausalLM(MistralConfig(**common, sliding_window=window))
    elif kind == "phi3":
        model = Phi3ForCausalLM(Phi3Config(**common, sliding_window=window, original_max_position_embeddings=256))
    elif kind == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**common, use_sliding_window=True, sliding_window=window or big,
                                             max_window_layers=1))  # fmt: skip
    elif kind == "gemma2":
        model = Gemma2ForCausalLM(Gemma2Config(**common, head_dim=8, sliding_window=window or big))
    elif kind == "gemma3":
        model = Gemma3ForCausalLM(Gemma3TextConfig(**common, head_dim=8, sliding_window=window or big,
                                                   layer_types=["sliding_attention", "full_attention"]))  # fmt: skip
    else:
        raise ValueError(kind)
    model.config._attn_implementation = attn
    return model.float().eval()


def collated_batch(num_pairs: int = 3, seed: int = 0, left_pad: bool = False, distinct_prompt: bool = True):
    """A batch as the host's pairwise collator lays it out: chosen rows, then rejected rows, padded.

    With ``distinct_prompt`` the last pair's two prompts differ, so that pair cannot be shared.
    """
    g = torch.Generator().manual_seed(seed)

    def rand(n: int) -> list[int]:
        return torch.randint(1, VOCAB, (n,), generator=g).tolist()

    def length(lo: int, hi: int) -> int:
        return int(torch.randint(lo, hi + 1, (1,), generator=g))

    chosen, rejected = [], []
    for i in range(num_pairs):
        prompt = rand(length(2, 9))
        chosen.append((prompt, rand(length(1, 8))))
        other = rand(len(prompt) + 1) if distinct_prompt and i == num_pairs - 1 else prompt
        rejected.append((other, rand(length(1, 8))))

    rows = chosen + rejected
    width = max(len(p) + len(r) for p, r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, IGNORE_INDEX)
    for i, (prompt, response) in enumerate(rows):
        n = len(prompt) + len(response)
        cols = slice(width - n, width) if left_pad else slice(0, n)
        ids[i, cols] = torch.tensor(prompt + response)
        mask[i, cols] = 1
        labels[i, cols] = torch.tensor([IGNORE_INDEX] * len(prompt) + response)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def sums_and_grads(model: torch.nn.Module, batch: dict, cfg: LeanConfig, seed: int = 1):
    """Per-sequence sums and lengths, and parameter gradients of a random linear function of the sums."""
    model.zero_grad(set_to_none=True)
    sums, lengths = SequenceLogps(cfg)(model, model, batch)
    weights = torch.randn(sums.shape, generator=torch.Generator().manual_seed(seed))
    (sums * weights).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return sums.detach(), lengths, grads


def assert_same(actual, expected) -> None:
    torch.testing.assert_close(actual[0], expected[0], atol=1e-5, rtol=1e-5)
    assert torch.equal(actual[1], expected[1])
    assert actual[2].keys() == expected[2].keys()
    for name in expected[2]:
        torch.testing.assert_close(actual[2][name], expected[2][name], atol=1e-5, rtol=1e-4, msg=name)
