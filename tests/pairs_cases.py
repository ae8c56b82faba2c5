"""Prompt datasets and configs for the pairs tests: every prompt source the host reads, written locally."""

import json
from pathlib import Path
from typing import Any


REWARDS = Path(__file__).with_name("pairs_rewards.py")

ALPACA_PROMPTS = [
    {"instruction": f"Tell me about the {topic}.", "input": extra, "system": system}
    for topic, extra, system in [
        ("river", "", "Answer briefly."), ("mountain", "In two words.", ""), ("garden", "", "Be kind."),
        ("planet", "", ""), ("music", "With care.", "Answer briefly."), ("engine", "", ""),
        ("river", "", "Answer briefly."),  # a duplicate prompt: kept once
    ]
]  # fmt: skip
CHAT_SFT = [
    {"conversations": [{"from": "human", "value": "Hi, who are you?"}, {"from": "gpt", "value": "A bot."},
                       {"from": "human", "value": "Tell me about the forest."}, {"from": "gpt", "value": "Green."}]},
    {"conversations": [{"from": "human", "value": "Describe the ocean."}, {"from": "gpt", "value": "Blue."}]},
    {"conversations": [{"from": "human", "value": "A turn without its answer"}, {"from": "gpt", "value": "x"},
                       {"from": "gpt", "value": "broken"}]},  # unusable: roles out of order
    {"conversations": [{"from": "human", "value": "And the city?"}, {"from": "gpt", "value": "Busy."}]},
]  # fmt: skip


def write_prompt_datasets(dataset_dir: Path) -> Path:
    """Alpaca prompt-only rows (with a system column), sharegpt SFT chats (one multi-turn, one broken)."""
    dataset_dir.mkdir(parents=True, exist_ok=True)
    (dataset_dir / "prompts_alpaca.json").write_text(json.dumps(ALPACA_PROMPTS), encoding="utf-8")
    (dataset_dir / "chat_sft.json").write_text(json.dumps(CHAT_SFT), encoding="utf-8")
    info = {
        "prompts_alpaca": {
            "file_name": "prompts_alpaca.json",
            "columns": {"prompt": "instruction", "query": "input", "system": "system"},
        },
        "chat_sft": {"file_name": "chat_sft.json", "formatting": "sharegpt", "columns": {"messages": "conversations"}},
    }
    (dataset_dir / "dataset_info.json").write_text(json.dumps(info), encoding="utf-8")
    return dataset_dir


def pairs_config(model: Path, dataset_dir: Path, output_dir: Path, **overrides: Any) -> dict[str, Any]:
    """A small pairs run on the tiny model: 3 samples of at most 12 tokens per prompt, scored by a function."""
    config: dict[str, Any] = {
        "model_name_or_path": str(model),
        "dataset": "prompts_alpaca,chat_sft",
        "dataset_dir": str(dataset_dir),
        "template": "llama2",
        "num_samples": 3,
        "max_new_tokens": 12,
        "batch_size": 3,
        "seed": 7,
        "output_dir": str(output_dir),
        "reward_function": f"{REWARDS}:distinct_chars",
        "drop_truncated": "none",
    }
    config.update(overrides)
    return {key: value for key, value in config.items() if value is not None}


def training_examples(output_dir: Path, model: Path | str, template: str) -> tuple[list[dict], list[int], Any]:
    """pairs.json through the host's own pairwise processor (``stage: rm`` data path, as ``stage: simpo`` reads it).

    Returns ``(examples, the prompt index of each, tokenizer)``, in pairs.json order.
    """
    from llamafactory.data import get_dataset, get_template_and_fix_tokenizer
    from llamafactory.hparams import get_train_args
    from llamafactory.model import load_tokenizer

    model_args, data_args, training_args, _, _ = get_train_args(
        {
            "stage": "rm",
            "model_name_or_path": str(model),
            "do_train": True,
            "dataset": "onpolicy",
            "dataset_dir": str(output_dir),
            "template": template,
            "cutoff_len": 4096,
            "output_dir": str(output_dir / "x"),
            "report_to": "none",
        }  # fmt: skip
    )
    tokenizer_module = load_tokenizer(model_args)
    tokenizer = tokenizer_module["tokenizer"]
    chat_template = get_template_and_fix_tokenizer(tokenizer, data_args)
    module = get_dataset(chat_template, model_args, data_args, training_args, stage="rm", **tokenizer_module)
    lines = (output_dir / "candidates.jsonl").read_text(encoding="utf-8").splitlines()
    kept = [c["prompt_index"] for c in map(json.loads, lines) if c["role"] == "chosen"]
    return list(module["train_dataset"]), kept, tokenizer
