"""Convert an UltraFeedback-style preference file into LLaMA-Factory's sharegpt ranking format.

The on-policy datasets of the SimPO paper (princeton-nlp/mistral-instruct-ultrafeedback, llama3-ultrafeedback,
llama3-ultrafeedback-armorm, gemma2-ultrafeedback-armorm) store `chosen` and `rejected` as whole conversations
(lists of {"role", "content"}); the host's ranking format wants the prompt turns in `conversations` and one
`chosen` and one `rejected` message. This script reads files you already have (parquet, jsonl or json); it
downloads nothing.

    python examples/convert_ultrafeedback.py train-*.parquet -o data/llama3_ultrafeedback_armorm.json
"""

import argparse
import json
from pathlib import Path

from datasets import load_dataset


ROLES = {"user": "human", "assistant": "gpt", "system": "system"}


def convert_row(row: dict) -> dict | None:
    """One pair, or None when the two conversations do not share their prompt turns."""
    chosen, rejected = row["chosen"], row["rejected"]
    if chosen[:-1] != rejected[:-1] or chosen[-1]["role"] != "assistant" or rejected[-1]["role"] != "assistant":
        return None
    return {
        "conversations": [{"from": ROLES[m["role"]], "value": m["content"]} for m in chosen[:-1]],
        "chosen": {"from": "gpt", "value": chosen[-1]["content"]},
        "rejected": {"from": "gpt", "value": rejected[-1]["content"]},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+", help="local parquet/jsonl/json files of one split")
    parser.add_argument("-o", "--output", required=True, help="output .json for your dataset_dir")
    args = parser.parse_args()

    kind = {".parquet": "parquet", ".jsonl": "json", ".json": "json"}[Path(args.files[0]).suffix]
    rows = load_dataset(kind, data_files=args.files, split="train")
    converted = [pair for pair in map(convert_row, rows) if pair is not None]
    Path(args.output).write_text(json.dumps(converted, ensure_ascii=False), encoding="utf-8")
    print(f"wrote {len(converted)} pairs to {args.output} ({len(rows) - len(converted)} skipped)")


if __name__ == "__main__":
    main()
