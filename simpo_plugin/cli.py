"""``simpo-plugin``: the plugin's own commands, parsing and wiring only (like the host's ``llamafactory-cli``).

``simpo-plugin pairs CONFIG.yaml [key=value | --key value ...]`` builds on-policy preference pairs;
``simpo-plugin eval CONFIG.yaml ...`` judges models against a baseline (raw and length-controlled win rates);
``simpo-plugin rounds CONFIG.yaml ...`` runs pairs, SimPO training and eval round after round (docs/rounds.md).
Configuration mistakes print one line naming the key and exit with status 2; a run that cannot go on (every
inference server gone) prints one line and exits with 1; an interrupted run (Ctrl-C: 130, SIGTERM: 143) stops what
it started and resumes when the same command runs again.
"""

import difflib
import signal
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

import yaml

from . import __version__
from .errors import EmptyOutput, RunStopped, SimPOArgumentError


USAGE = """usage: simpo-plugin <command> CONFIG.yaml [key=value | --key value ...]

commands:
  pairs    sample responses from the policy, score them, keep best vs worst as SimPO pairs (resumable)
  eval     judge two or more models (or AlpacaEval outputs files) against a baseline: LC and raw win rates,
           lengths, capability checks
  rounds   pairs, SimPO training and eval, round after round, each round on the last one's policy (resumable)

Run `simpo-plugin <command> --help` for the keys of a command; docs/onpolicy.md, docs/evaluation.md and
docs/rounds.md have the details."""

ROUNDS_HELP = """usage: simpo-plugin rounds CONFIG.yaml [key=value | --key value ...]  (pairs.top_p=0.9: a block's key)

keys:
  model_name_or_path     round 0's policy (required)
  template               the chat template every block uses (required)
  output_dir             round_<r>/{pairs,train,eval}, rounds_results.json, rounds_report.md, rounds.png (required)
  rounds                 how many rounds (required)
  prompts_per_round      prompts per round (default: the pairs dataset's prompts split evenly over the rounds)
  stop_when              lc_gain_below (points), collapse_warning (true/false), check_drop_above (points)
  adapters               LoRA rounds: `merge` (each round merged into the next round's policy)
  pairs:                 the keys of `simpo-plugin pairs` (see `simpo-plugin pairs --help`)
  train:                 the keys of a `stage: simpo` training config (`llamafactory-cli train --stage simpo --help`)
  eval:                  the keys of `simpo-plugin eval` (see `simpo-plugin eval --help`)

The loop sets each block's models, template and output_dir, the pairs' prompt_slice and the training's dataset
itself; docs/rounds.md lists every key it sets."""


def parse_value(text: str) -> Any:
    """YAML typing for command-line values, as the host's overrides have (``0.8`` -> float, ``true`` -> bool)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def read_config(argv: list[str]) -> dict[str, Any]:
    """A YAML/JSON config (optional) merged with ``key=value``, ``--key value`` and ``--key=value`` overrides."""
    config: dict[str, Any] = {}
    rest = list(argv)
    if rest and not rest[0].startswith("-") and "=" not in rest[0]:
        path = Path(rest.pop(0))
        if not path.is_file():
            raise SimPOArgumentError(f"Config file `{path}` not found.")
        loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if not isinstance(loaded, dict):
            kind = type(loaded).__name__
            raise SimPOArgumentError(f"Config file `{path}` must hold `key: value` lines, got a {kind}.")
        config.update(loaded)
    while rest:
        token = rest.pop(0)
        key, has_value, value = token.lstrip("-").partition("=")
        if not has_value:
            if not token.startswith("--") or not rest:
                raise SimPOArgumentError(f"Cannot read `{token}`: write overrides as `key=value` or `--key value`.")
            value = rest.pop(0)
        config[key.replace("-", "_")] = parse_value(value)
    return config


def command_help(name: str) -> str:
    if name == "rounds":
        return ROUNDS_HELP
    from .evaluation import EvalArguments
    from .pairs import PairsArguments

    args_class = {"pairs": PairsArguments, "eval": EvalArguments}[name]
    lines = [f"usage: simpo-plugin {name} CONFIG.yaml [key=value | --key value ...]", "", "keys:"]
    for field in fields(args_class):
        default = "required" if field.name in ("output_dir", "models") else f"default {field.default!r}"
        lines.append(f"  {field.name:<22} {field.metadata.get('help', '')} ({default})")
    lines += [
        "",
        "plus the host's model and data keys, as in `llamafactory-cli` configs: model_name_or_path (pairs: required),",
        "adapter_name_or_path, template, dataset (required, except for an eval whose models are all outputs files),",
        "dataset_dir, max_samples, cutoff_len (the prompt budget), default_system, enable_thinking,",
        "trust_remote_code, infer_dtype, ...",
    ]
    return "\n".join(lines)


def run_pairs(argv: list[str]) -> int:
    from .pairs import build_pairs

    build_pairs(read_config(argv))
    return 0


def run_eval(argv: list[str]) -> int:
    from .evaluation import evaluate_models

    evaluate_models(read_config(argv))
    return 0


def run_rounds(argv: list[str]) -> int:
    from .rounds import run_rounds as run

    run(nest(read_config(argv)))
    return 0


def nest(config: dict[str, Any]) -> dict[str, Any]:
    """``pairs.temperature: 0.7`` (a command-line override of a block's key) into ``pairs: {temperature: 0.7}``."""
    nested: dict[str, Any] = {}
    for key, value in config.items():
        block, dot, inner = key.partition(".")
        if dot and block in ("pairs", "train", "eval", "stop_when"):
            existing = nested.setdefault(block, {})
            if not isinstance(existing, dict):
                raise SimPOArgumentError(f"`{block}:` must hold `key: value` lines to take `{key}`.")
            existing[inner] = value
        elif isinstance(value, dict) and isinstance(nested.get(key), dict):
            nested[key] = {**value, **nested[key]}
        else:
            nested[key] = value
    return nested


COMMANDS = {"pairs": run_pairs, "eval": run_eval, "rounds": run_rounds}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    if argv[0] in ("-V", "--version", "version"):
        print(f"simpo-plugin {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        close = difflib.get_close_matches(name, list(COMMANDS), n=1)
        hint = f" (did you mean `{close[0]}`?)" if close else ""
        print(f"simpo-plugin: error: unknown command `{name}`{hint}\n\n{USAGE}", file=sys.stderr)
        return 2
    if any(token in ("-h", "--help") for token in rest):
        print(command_help(name))
        return 0
    terminated = []

    def on_sigterm(signum: int, frame: Any) -> None:  # unwind like Ctrl-C: saved parts stay, started servers stop
        terminated.append(signum)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        return COMMANDS[name](rest)
    except EmptyOutput as exc:
        print(f"simpo-plugin {name}: error: {exc}", file=sys.stderr)
        return 1
    except RunStopped as exc:
        print(f"simpo-plugin {name}: {exc}", file=sys.stderr)
        return 1
    except SimPOArgumentError as exc:
        source = next((token for token in rest[:1] if not token.startswith("-") and "=" not in token), None)
        where = f" (config: {Path(source).resolve()})" if source else ""
        print(f"simpo-plugin {name}: error: {exc}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"simpo-plugin {name}: interrupted; run the same command again to resume.", file=sys.stderr)
        return 128 + signal.SIGTERM if terminated else 130
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
