"""What the SimPO step benchmarks share: the model shapes, the data, and each implementation's arguments.

One setup feeds both measurements of ``bench_step.py`` (speed and peak memory: the same steps, timed and watched)
and the smaller scripts beside it (``first_step_memory.py``, ``probe_cost.py``), as Liger's benchmark guideline asks:
the runner only launches, times and prints. Nothing here downloads anything; models and data are built locally.
"""

import math
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


BETA = 2.0
GAMMA = 1.0  # absolute margin, given to every implementation as is (host/plugin: simpo_gamma, TRL: simpo_gamma)
LEARNING_RATE = 1.0e-5
SEED = 42
IGNORE_INDEX = -100
DATASET = "bench_pairs"
IMPLS = ("plugin", "plugin-rows", "host", "trl")  # plugin: the default (block route); -rows: dense-mask rows

# Word lists of the synthetic alpaca-ranking task (prompt filler, helpful vs unhelpful answers).
TOPICS = "river mountain garden planet music engine bridge forest market ocean city library winter robot".split()
FILLER = (
    "please explain describe compare history details reasons examples simple short story about why how what when "
    "where people use today future past science art build grow travel learn change world small large"
).split()
GOOD = "helpful clear kind accurate polite useful honest careful friendly precise thorough gentle".split()
BAD = "rude wrong lazy vague careless useless sloppy hostile confusing boring dismissive false".split()

# Model shapes: `tiny` is the CPU default; `1b` and `8b` are Llama-3.2-1B's and Llama-3-8B's shapes with random
# weights (GPU, see README).
SHAPES: dict[str, dict[str, Any]] = {
    "tiny": dict(
        hidden_size=256,
        intermediate_size=1024,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
    ),
    "smollm2": dict(  # SmolLM2-135M-Instruct's shape (vocab 49152, tied embeddings)
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        max_position_embeddings=8192,
        rope_theta=100000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
    ),
    "1b": dict(  # Llama-3.2-1B's shape (vocab 128256, tied embeddings): the GPU check's benchmark
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        max_position_embeddings=8192,
        rope_theta=500000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
    ),
    "8b": dict(
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        max_position_embeddings=8192,
        rope_theta=500000.0,
        rms_norm_eps=1e-5,
    ),
}


# ----------------------------------------------------------------------------------------------------------------
# Setup (parent process): data, tokenizer and one model per vocabulary, shared by every worker.
# ----------------------------------------------------------------------------------------------------------------


# Median prompt / chosen / rejected lengths of the host's demo preference sets (dpo_en_demo), with long tails.
REAL_MEDIANS = (180, 320, 340)
REAL_SIGMA = 0.7  # log-normal spread: about 5% of responses are over three times the median


def synthetic_rows(n: int, seed: int = 0, lengths: str = "uniform") -> list[dict[str, str]]:
    """Alpaca ranking rows, one word ~ one token.

    ``uniform``: prompts of 20-120 words, chosen/rejected responses of 10-150 words each. ``real``: log-normal
    lengths around the demo sets' medians (:data:`REAL_MEDIANS`), clipped to 8-2000 words.
    """
    rng = random.Random(seed)

    def draw(lo: int, hi: int, median: int) -> int:
        if lengths == "uniform":
            return rng.randint(lo, hi)
        return int(min(max(rng.lognormvariate(math.log(median), REAL_SIGMA), 8), 2000))

    rows = []
    for _ in range(n):
        topic = rng.choice(TOPICS)
        prompt = f"Tell me about the {topic}: " + " ".join(
            rng.choices(FILLER + TOPICS, k=draw(16, 116, REAL_MEDIANS[0]))
        )
        rows.append(
            {
                "instruction": prompt + ".",
                "input": "",
                "chosen": " ".join([topic] + rng.choices(GOOD, k=draw(9, 149, REAL_MEDIANS[1]))) + ".",
                "rejected": " ".join([topic] + rng.choices(BAD, k=draw(9, 149, REAL_MEDIANS[2]))) + ".",
            }
        )
    return rows


def build_assets(
    root: Path, vocabs: list[int], shape: str, num_pairs: int, dtype: str, lengths: str = "uniform"
) -> dict[str, Any]:
    """Write the dataset, a local BPE tokenizer and one randomly initialised Llama per vocabulary size."""
    import torch

    from simpo_plugin.testing import build_tiny_model, build_tokenizer, template_corpus, write_preference_dataset

    rows = synthetic_rows(num_pairs, lengths=lengths)
    dataset_dir = write_preference_dataset(root / "data", DATASET, rows)
    corpus = [value for row in rows for value in row.values() if value] + template_corpus()
    tokenizer = build_tokenizer(root / "tokenizer", corpus, vocab_size=1000)
    models = {}
    for vocab in vocabs:
        path = root / f"llama-{shape}-v{vocab}-{lengths}"
        if not (path / "config.json").exists():
            torch_dtype = torch.bfloat16 if dtype == "bf16" else torch.float32
            previous = torch.get_default_dtype()
            torch.set_default_dtype(torch_dtype)  # initialise directly in the saved dtype (8B: no fp32 copy)
            try:
                build_tiny_model(path, tokenizer, seed=0, vocab_size=vocab, **SHAPES[shape])
            finally:
                torch.set_default_dtype(previous)
        models[vocab] = str(path)
    return {"dataset_dir": str(dataset_dir), "models": models, "tokenizer_size": len(tokenizer)}


@dataclass
class WorkerSpec:
    """Everything one worker needs; written as JSON by the parent."""

    impl: str
    vocab: int
    model: str
    dataset_dir: str
    output_dir: str
    result_path: str
    batch_size: int
    cutoff_len: int
    warmup_steps: int
    batches: int
    repeats: int
    dtype: str
    deepspeed: str | None = None
    gradient_checkpointing: bool = True
    plugin_options: dict[str, Any] = field(default_factory=dict)
    vocab_size: int = 0  # the model's, to find the head's ops in the profile
    profile: bool = True  # one extra step under torch.profiler for the attention / body / head split

    @property
    def timed_end(self) -> int:
        """Burn-in, then ``batches x repeats`` timed steps in a fixed order; an epoch holds ``batches + 1`` batches,
        so later epochs train the same batches again and each batch's fastest step counts."""
        return self.warmup_steps + self.batches * self.repeats

    @property
    def max_steps(self) -> int:
        return self.timed_end + int(self.profile)  # one more step, profiled and not timed


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def host_args(spec: WorkerSpec) -> dict[str, Any]:
    """LLaMA-Factory arguments shared by the host and the plugin; ``impl`` adds the stage keys."""
    args: dict[str, Any] = {
        "model_name_or_path": spec.model,
        "do_train": True,
        "finetuning_type": "full",
        "dataset": DATASET,
        "dataset_dir": spec.dataset_dir,
        "template": "default",
        "cutoff_len": spec.cutoff_len,
        "overwrite_cache": True,
        "output_dir": spec.output_dir,
        "overwrite_output_dir": True,
        "per_device_train_batch_size": spec.batch_size,
        "gradient_accumulation_steps": 1,
        "learning_rate": LEARNING_RATE,
        "lr_scheduler_type": "constant",
        "optim": "adamw_torch",
        "max_steps": spec.max_steps,
        "logging_steps": spec.max_steps,
        "save_strategy": "no",
        "report_to": "none",
        "disable_shuffling": True,
        "seed": SEED,
        "pref_beta": BETA,
        "simpo_gamma": GAMMA,
        "disable_gradient_checkpointing": not spec.gradient_checkpointing,
        "bf16": spec.dtype == "bf16",
        "use_cpu": not cuda_available(),  # transformers only accepts bf16 on CPU with it
    }
    if spec.deepspeed:
        args["deepspeed"] = spec.deepspeed
    if spec.impl == "host":
        args.update(stage="dpo", pref_loss="simpo")
    else:
        args.update(spec.plugin_options, stage="simpo", simpo_attention_route=spec.impl != "plugin-rows")
    return args


def host_pairs(spec: WorkerSpec) -> tuple[Any, Any]:
    """The host's preprocessed pairwise dataset (``stage="rm"``, as ``run_dpo`` builds it) and its tokenizer."""
    from llamafactory.data import get_dataset, get_template_and_fix_tokenizer
    from llamafactory.hparams import get_train_args
    from llamafactory.model import load_tokenizer

    model_args, data_args, training_args, _, _ = get_train_args(
        host_args(WorkerSpec(**asdict(spec) | {"impl": "host"}))
    )
    tokenizer_module = load_tokenizer(model_args)
    template = get_template_and_fix_tokenizer(tokenizer_module["tokenizer"], data_args)
    dataset = get_dataset(template, model_args, data_args, training_args, stage="rm", **tokenizer_module)
    columns = [f"{side}_{key}" for side in ("chosen", "rejected") for key in ("input_ids", "attention_mask", "labels")]
    return dataset["train_dataset"].select_columns(columns), tokenizer_module["tokenizer"]


def batch_accounting(impl: str, batch: dict[str, Any], attn: str) -> tuple[int, int, int]:
    """(tokens, unique tokens, computed tokens) of one collated batch.

    tokens: unpadded prompt+chosen plus prompt+rejected lengths (the throughput unit, the same for everyone);
    unique: each prompt once plus both responses, unpadded; computed: the positions the model actually runs
    (host and TRL: 2B padded rows; plugin: the layout it builds from the same batch, replayed here).
    """
    if impl == "trl":  # CPOTrainer.concatenated_inputs pads chosen and rejected rows to the longer of the two
        sides = [(batch[f"{side}_attention_mask"], batch[f"{side}_labels"]) for side in ("chosen", "rejected")]
        computed = 2 * sides[0][0].shape[0] * max(sides[0][0].shape[1], sides[1][0].shape[1])
        rows = [row for mask, labels in sides for row in zip(mask.tolist(), labels.tolist(), strict=True)]
    else:
        ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
        rows = list(zip(mask.tolist(), labels.tolist(), strict=True))
        computed = ids.numel()
        if impl.startswith("plugin"):
            from types import SimpleNamespace

            from simpo_plugin.lean import LeanConfig, SequenceLogps
            from simpo_plugin.lean.sequence import base_attention

            config = LeanConfig(attention_route=impl != "plugin-rows")
            base = base_attention(SimpleNamespace(_attn_implementation=attn))
            model = SimpleNamespace(config=SimpleNamespace(_attn_implementation=base))  # the layout, not a model
            batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
            computed = SequenceLogps(config).layout(batch, base, model).computed_tokens
    num_pairs = len(rows) // 2
    tokens = unique = 0
    for i, (row_mask, row_labels) in enumerate(rows):  # chosen rows first, then rejected rows; same prompt per pair
        kept = [lab for lab, m in zip(row_labels, row_mask, strict=True) if m]
        prompt = next((j for j, lab in enumerate(kept) if lab != IGNORE_INDEX), len(kept))
        tokens += len(kept)
        unique += len(kept) - (prompt if i >= num_pairs else 0)
    return tokens, unique, computed
