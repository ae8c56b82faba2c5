"""Offline fixtures: a tiny Llama with a locally trained tokenizer and a synthetic preference task.

Used by the demo, the tests and the benchmarks; nothing here touches a model hub. The task has a clear signal
that a 2-layer model learns in a few dozen steps: chosen answers use "helpful" words, rejected answers use
"unhelpful" words, and both are drawn with the same length distribution, so length carries no preference.

Command line: ``python -m simpo_plugin.testing DIR`` writes ``DIR/tiny-llama`` and ``DIR/data``.
"""

import json
import random
import sys
from pathlib import Path
from typing import Any


TOPICS = "river mountain garden planet music engine bridge forest market ocean city library winter robot".split()
GOOD = "helpful clear kind accurate polite useful honest careful friendly precise thorough gentle".split()
BAD = "rude wrong lazy vague careless useless sloppy hostile confusing boring dismissive false".split()
DATASET_NAME = "simpo_synthetic"
EVAL_DATASET_NAME = "simpo_synthetic_eval"


def preference_rows(n: int, seed: int = 0, min_words: int = 4, max_words: int = 10) -> list[dict[str, str]]:
    """Alpaca-style ranking rows: instruction, input, chosen, rejected."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        topic = rng.choice(TOPICS)
        rows.append(
            {
                "instruction": f"Tell me about the {topic} and the {rng.choice(TOPICS)}.",
                "input": "",
                "chosen": " ".join([topic] + rng.choices(GOOD, k=rng.randint(min_words, max_words))) + ".",
                "rejected": " ".join([topic] + rng.choices(BAD, k=rng.randint(min_words, max_words))) + ".",
            }
        )
    return rows


def write_preference_dataset(dataset_dir: str | Path, name: str, rows: list[dict[str, Any]]) -> Path:
    """Write ``rows`` as ``{name}.json`` and register it, as a ranking dataset, in ``dataset_info.json``."""
    dataset_dir = Path(dataset_dir)
    dataset_dir.mkdir(parents=True, exist_ok=True)
    (dataset_dir / f"{name}.json").write_text(json.dumps(rows, ensure_ascii=False, indent=1), encoding="utf-8")
    info_path = dataset_dir / "dataset_info.json"
    info = json.loads(info_path.read_text(encoding="utf-8")) if info_path.exists() else {}
    info[name] = {
        "file_name": f"{name}.json",
        "ranking": True,
        "columns": {"prompt": "instruction", "query": "input", "chosen": "chosen", "rejected": "rejected"},
    }
    info_path.write_text(json.dumps(info, indent=2), encoding="utf-8")
    return dataset_dir


def build_tokenizer(path: str | Path, corpus: list[str], vocab_size: int = 400) -> "Any":
    """Train a byte-level BPE tokenizer on ``corpus`` and save it as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(corpus, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    tokenizer.save_pretrained(str(path))
    return tokenizer


def build_tiny_model(path: str | Path, tokenizer: "Any", seed: int = 0, **config: Any) -> "Any":
    """Save a randomly initialised Llama next to its tokenizer; ``config`` overrides the tiny defaults."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    settings = dict(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    settings.update(config)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**settings))
    model.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return model


def template_corpus() -> list[str]:
    """Strings of the host's `default` template, so the tokenizer covers its scaffolding compactly."""
    return ["Human: ", "\nAssistant:", "System: ", "\n"]


def build_demo_assets(root: str | Path, n_train: int = 256, n_eval: int = 64, seed: int = 0) -> dict[str, Path]:
    """Tiny model + tokenizer in ``root/tiny-llama`` and train/eval preference data in ``root/data``."""
    root = Path(root)
    train_rows = preference_rows(n_train, seed=seed)
    eval_rows = preference_rows(n_eval, seed=seed + 1)
    dataset_dir = write_preference_dataset(root / "data", DATASET_NAME, train_rows)
    write_preference_dataset(dataset_dir, EVAL_DATASET_NAME, eval_rows)
    corpus = [v for row in train_rows + eval_rows for v in row.values() if v] + template_corpus()
    tokenizer = build_tokenizer(root / "tiny-llama", corpus)
    build_tiny_model(root / "tiny-llama", tokenizer, seed=seed)
    return {"model": root / "tiny-llama", "dataset_dir": dataset_dir}


if __name__ == "__main__":
    paths = build_demo_assets(sys.argv[1] if len(sys.argv) > 1 else "demo_output")
    print(json.dumps({key: str(value) for key, value in paths.items()}))
