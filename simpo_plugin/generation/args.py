"""The keys of ``simpo-plugin pairs`` and ``eval``: their own dataclasses plus the host's model and data keys.

The host's ``ModelArguments`` and ``DataArguments`` are reused as they are (``model_name_or_path``,
``adapter_name_or_path``, ``template``, ``dataset``, ``dataset_dir``, ``max_samples``, ``cutoff_len``, ...), so a
pairs config reads like a ``llamafactory-cli`` config. Any other key is an error that names it.
"""

import difflib
import warnings
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any, Literal

from ..errors import SimPOArgumentError
from .selection import DROP_TRUNCATED


if TYPE_CHECKING:
    from llamafactory.hparams import DataArguments, ModelArguments


BACKENDS = ("auto", "hf", "server")


VLLM_REPLACED = (
    "`backend: vllm` (vLLM inside this process) was replaced by `backend: server`: vLLM cannot share an environment "
    "with LLaMA-Factory 0.9.5 (their transformers pins exclude each other). Serve the model with vLLM and give "
    '`server_urls`, or let the run start it with `server_command` (docs/onpolicy.md, "Inference servers").'
)


class PairsConfigError(SimPOArgumentError):
    """A bad pairs config or input; the CLI prints it as one line and exits non-zero."""


def check_types(args: Any) -> None:
    """Every key whose default is a bool, an int or a float holds one (a float key takes an int as well).

    Raises:
        PairsConfigError: naming the key, the expected type and the value given.
    """
    for f in fields(args):
        value, default = getattr(args, f.name), f.default
        if isinstance(default, bool):
            ok, kind = isinstance(value, bool), "true or false"
        elif isinstance(default, int):
            ok, kind = isinstance(value, int) and not isinstance(value, bool), "an integer"
        elif isinstance(default, float):
            if isinstance(value, str):  # YAML reads `1e-3` (no dot) as text
                try:
                    value = float(value)
                except ValueError:
                    pass
            ok, kind = isinstance(value, (int, float)) and not isinstance(value, bool), "a number"
            if ok:
                setattr(args, f.name, float(value))
        else:
            continue
        if not ok:
            raise PairsConfigError(f"`{f.name}` must be {kind}, got {value!r}.")


@dataclass
class GenerationArguments:
    """Keys shared by ``simpo-plugin pairs`` and ``simpo-plugin eval``: output, sampling and the scorer."""

    output_dir: str | None = field(default=None, metadata={"help": "Where the outputs and the report go."})
    num_samples: int = field(default=5, metadata={"help": "Responses sampled per prompt (the paper: 5)."})
    temperature: float = field(default=0.8, metadata={"help": "Sampling temperature (the paper: 0.8); 0 is greedy."})
    top_p: float = field(default=0.95, metadata={"help": "Nucleus sampling mass (the paper: 0.95)."})
    max_new_tokens: int = field(
        default=1024, metadata={"help": "Longest response; a sample that has not stopped by then is truncated."}
    )
    seed: int = field(default=42, metadata={"help": "Base seed; each prompt's seed derives from it and the prompt."})
    backend: Literal["auto", "hf", "server"] = field(
        default="auto",
        metadata={
            "help": "`server` (OpenAI-compatible inference servers: `server_urls` or `server_command`), `hf` "
            "(batched generate in this process), `auto`: `server` when servers are given, else `hf`."
        },
    )
    batch_size: int | None = field(
        default=None,
        metadata={"help": "Prompts per generation call and per saved chunk (default 8 for hf, 32 for server)."},
    )
    server_urls: list[str] | str | None = field(
        default=None,
        metadata={
            "help": "OpenAI-compatible endpoints (vLLM, SGLang, a router), e.g. `http://10.0.0.5:8000/v1`; a list "
            "or a comma-separated string. Requests are spread over them and retried on another one."
        },
    )
    server_command: str | None = field(
        default=None,
        metadata={
            "help": "Start one server for this run from a command template with `{model}` and `{port}`, wait until "
            "it answers, stop it at the end (its output: `output_dir/server.log`)."
        },
    )
    server_model: str | None = field(
        default=None,
        metadata={"help": "The served model name to request (default: the one model the servers list)."},
    )
    server_api_key_env: str = field(
        default="SIMPO_SERVER_API_KEY",
        metadata={"help": "Environment variable holding the servers' API key (never put the key in a config)."},
    )
    max_concurrency: int = field(
        default=8,
        metadata={"help": "Requests in flight per endpoint, each one prompt x `num_samples` sequences."},
    )
    request_timeout: float = field(
        default=600.0, metadata={"help": "Seconds before a request counts as failed and is retried elsewhere."}
    )
    server_start_timeout: float = field(
        default=900.0, metadata={"help": "Seconds to wait for the servers to answer at the start of a run."}
    )
    reward_model: str | None = field(
        default=None,
        metadata={
            "help": "A sequence-classification reward model (e.g. ArmoRM) or a LLaMA-Factory `stage: rm` output dir."
        },
    )
    reward_template: str | None = field(
        default=None,
        metadata={"help": "Template of a LLaMA-Factory reward model (default: `template`); classifiers use theirs."},
    )
    reward_function: str | None = field(
        default=None,
        metadata={"help": "`package.module:function` or `file.py:function`: (prompt_messages, response) -> float."},
    )
    reward_batch_size: int = field(default=8, metadata={"help": "Responses per reward-model forward pass."})

    def validation(self) -> list[tuple[bool, str]]:
        bad_url, repeated_url, command_problem = self.bad_url, self.repeated_url, self.command_problem
        return [
            (bool(self.output_dir), "`output_dir` is required: the folder that receives the outputs and the report."),
            (self.num_samples >= 1, f"`num_samples` must be >= 1, got {self.num_samples}."),
            (self.temperature >= 0, f"`temperature` must be >= 0, got {self.temperature}."),
            (0 < self.top_p <= 1, f"`top_p` must be in (0, 1], got {self.top_p}."),
            (self.max_new_tokens >= 1, f"`max_new_tokens` must be >= 1, got {self.max_new_tokens}."),
            (self.backend != "vllm", VLLM_REPLACED),
            (self.backend in BACKENDS, f"`backend` must be one of {', '.join(BACKENDS)}, got `{self.backend}`."),
            (not (self.server_urls and self.server_command), "Give `server_urls` (servers you started) or "
             "`server_command` (one the run starts), not both."),
            (self.backend != "server" or self.has_servers, "`backend: server` needs `server_urls` (running "
             "OpenAI-compatible endpoints) or `server_command` (a command that starts one)."),
            (self.backend != "hf" or not self.has_servers, "`server_urls`/`server_command` are for `backend: server`; "
             "remove them or set `backend: server` (or `auto`)."),
            (not bad_url, f"`server_urls`: `{bad_url}` is not an http(s) URL (e.g. http://127.0.0.1:8000/v1)."),
            (not repeated_url, f"`server_urls` lists `{repeated_url}` twice; list each endpoint once "
             "(`max_concurrency` sets the requests in flight per endpoint)."),
            (not command_problem, command_problem),
            (self.max_concurrency >= 1, f"`max_concurrency` must be >= 1, got {self.max_concurrency}."),
            (self.request_timeout > 0, f"`request_timeout` must be > 0 seconds, got {self.request_timeout}."),
            (self.server_start_timeout > 0, f"`server_start_timeout` must be > 0 seconds, got "
             f"{self.server_start_timeout}."),
            (self.batch_size is None or self.batch_size >= 1, f"`batch_size` must be >= 1, got {self.batch_size}."),
            (self.reward_batch_size >= 1, f"`reward_batch_size` must be >= 1, got {self.reward_batch_size}."),
            (not (self.reward_model and self.reward_function), "Give one scorer, `reward_model` or "
             "`reward_function`, not both."),
        ]  # fmt: skip

    def __post_init__(self) -> None:
        if isinstance(self.server_urls, str):
            self.server_urls = [u.strip() for u in self.server_urls.split(",") if u.strip()]
        check_types(self)
        for ok, message in self.validation():
            if not ok:
                raise PairsConfigError(message)

    @property
    def has_scorer(self) -> bool:
        return bool(self.reward_model or self.reward_function)

    @property
    def bad_url(self) -> str | None:
        """The first of ``server_urls`` that is not an http(s) URL, or None."""
        urls = self.server_urls if isinstance(self.server_urls, list) else []
        return next((url for url in urls if not str(url).strip().startswith(("http://", "https://"))), None)

    @property
    def repeated_url(self) -> str | None:
        """The first endpoint that ``server_urls`` lists twice (``/v1`` or a trailing slash aside), or None."""
        from .server import base_url

        seen: set[str] = set()
        for url in self.server_urls if isinstance(self.server_urls, list) else []:
            base = base_url(str(url))
            if base in seen:
                return str(url)
            seen.add(base)
        return None

    @property
    def command_problem(self) -> str:
        """Why ``server_command`` cannot start (no ``{port}``, a bad template, no such program), or ""."""
        from .serving import check_command

        return check_command(self.server_command) if self.server_command else ""

    @property
    def has_servers(self) -> bool:
        return bool(self.server_urls or self.server_command)

    @property
    def resolved_backend(self) -> str:
        """``auto`` -> ``server`` when servers are given, else ``hf``."""
        if self.backend == "auto":
            return "server" if self.has_servers else "hf"
        return self.backend

    def chunk_size(self, backend: str) -> int:
        return self.batch_size or (32 if backend == "server" else 8)


@dataclass
class PairsArguments(GenerationArguments):
    """Keys of ``simpo-plugin pairs``: the shared ones plus selection, output naming and sharding."""

    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Discard earlier partial results in `output_dir` instead of resuming."}
    )
    min_score_gap: float = field(
        default=0.0, metadata={"help": "Drop a prompt whose best and worst scores differ by less (ties always drop)."}
    )
    drop_truncated: str = field(
        default="chosen",
        metadata={
            "help": "Which truncated side drops a pair: `chosen` (default) drops a pair only when the chosen answer "
            "was cut off at `max_new_tokens`, keeping pairs whose rejected answer rambled past the budget; `both` "
            "drops when either was; `none` keeps all."
        },
    )
    keep_truncated: bool | None = field(
        default=None,
        metadata={"help": "Deprecated: `true` is `drop_truncated: none`, `false` is `drop_truncated: both`."},
    )
    dataset_name: str = field(default="onpolicy", metadata={"help": "Name of the output's dataset_info.json entry."})
    num_shards: int = field(default=1, metadata={"help": "Split the prompts over this many machines or runs."})
    shard_index: int = field(default=0, metadata={"help": "The shard this run takes, 0 <= shard_index < num_shards."})

    def validation(self) -> list[tuple[bool, str]]:
        return super().validation() + [
            (self.num_samples >= 2, f"`num_samples` must be >= 2 to form a pair, got {self.num_samples}."),
            (self.min_score_gap >= 0, f"`min_score_gap` must be >= 0, got {self.min_score_gap}."),
            (self.num_shards >= 1, f"`num_shards` must be >= 1, got {self.num_shards}."),
            (
                0 <= self.shard_index < self.num_shards,
                f"`shard_index` must be in [0, {self.num_shards}), got {self.shard_index}.",
            ),
            (bool(self.dataset_name.strip()), "`dataset_name` must not be empty."),
            (
                self.drop_truncated in DROP_TRUNCATED,
                f"`drop_truncated` must be one of {', '.join(DROP_TRUNCATED)}, got {self.drop_truncated!r}.",
            ),
            (
                self.keep_truncated is None or isinstance(self.keep_truncated, bool),
                f"`keep_truncated` must be true or false, got {self.keep_truncated!r}.",
            ),
            (
                self.keep_truncated is None or self.drop_truncated in ("chosen", self.keep_truncated_means),
                f"`keep_truncated: {str(self.keep_truncated).lower()}` (deprecated) means `drop_truncated: "
                f"{self.keep_truncated_means}`, but `drop_truncated: {self.drop_truncated}` is given too; keep only "
                "`drop_truncated`.",
            ),
            (
                self.has_scorer,
                "Give exactly one scorer: `reward_model` (a classifier reward model or a LLaMA-Factory `stage: rm` "
                "output dir) or `reward_function` (`package.module:function`); got neither.",
            ),
        ]

    @property
    def keep_truncated_means(self) -> str | None:
        """The ``drop_truncated`` value that the deprecated ``keep_truncated`` stands for (None when not given).

        ``drop_truncated`` at its default, ``chosen``, counts as not given (the dataclass cannot tell the two apart),
        so only ``both`` or ``none`` can conflict with ``keep_truncated``.
        """
        if self.keep_truncated is None:
            return None
        return "none" if self.keep_truncated else "both"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.keep_truncated is not None:  # validated: a bool that agrees with `drop_truncated`
            means = self.keep_truncated_means
            warnings.warn(
                f"`keep_truncated` is deprecated: use `drop_truncated: {means}` instead of "
                f"`keep_truncated: {str(self.keep_truncated).lower()}` (`drop_truncated: none|both`; the default, "
                "`chosen`, drops a pair only when its chosen answer was cut off).",
                FutureWarning,
                stacklevel=3,  # the caller of the dataclass's __init__
            )
            self.drop_truncated = means


@dataclass
class EvalArguments(GenerationArguments):
    """Keys of ``simpo-plugin eval``: the shared ones (greedy by default), the models, the judge and the checks."""

    models: list[Any] | str | None = field(
        default=None,
        metadata={
            "help": "Two or more models: paths (full checkpoints or LoRA adapters; their answers are generated) or "
            "`{name: NAME, outputs: FILE}` (precomputed answers in AlpacaEval's model_outputs format)."
        },
    )
    baseline: str | None = field(
        default=None, metadata={"help": "The model every other one is compared against (default: the first)."}
    )
    pairwise: bool = field(
        default=False, metadata={"help": "Judge every pair of models, not only each against the baseline."}
    )
    judge_model: str | None = field(
        default=None,
        metadata={"help": "A local chat model as a pairwise judge: P(A) read from its logits over `1` vs `2`."},
    )
    judge_template: str | None = field(
        default=None, metadata={"help": "The judge model's template (default: `template`)."}
    )
    judge_function: str | None = field(
        default=None,
        metadata={"help": "`package.module:function`: (instruction_messages, answer_a, answer_b) -> P(A beats B)."},
    )
    judge_batch_size: int = field(default=8, metadata={"help": "Judge prompts per forward pass."})
    checks: list[str] | str | None = field(
        default=None,
        metadata={"help": "Capability check sets: bundled names (arithmetic, json_format, constraints) or files."},
    )
    instruction_difficulty: str | None = field(
        default=None,
        metadata={
            "help": "AlpacaEval's per-instruction difficulties (a CSV or JSON of instruction -> difficulty): the LC "
            "win rate then uses its full formula."
        },
    )
    bootstrap_samples: int = field(
        default=200, metadata={"help": "Bootstrap resamples for the intervals (the LC one refits the GLM each time)."}
    )
    num_samples: int = field(default=1, metadata={"help": "Responses per prompt and model (greedy: 1)."})
    temperature: float = field(default=0.0, metadata={"help": "0 is greedy decoding (the default)."})
    max_new_tokens: int = field(
        default=512, metadata={"help": "Longest response; one still running then counts as not ended."}
    )
    show: int = field(default=8, metadata={"help": "Prompts shown side by side in eval_report.md."})

    def __post_init__(self) -> None:
        if isinstance(self.models, str):
            self.models = [m.strip() for m in self.models.split(",") if m.strip()]
        if isinstance(self.checks, str):
            self.checks = [c.strip() for c in self.checks.split(",") if c.strip()]
        super().__post_init__()

    @property
    def judges(self) -> list[str]:
        """The judge keys that are set (at most one may be)."""
        named = {"judge_model": self.judge_model, "judge_function": self.judge_function,
                 "reward_model": self.reward_model, "reward_function": self.reward_function}  # fmt: skip
        return [key for key, value in named.items() if value]

    def validation(self) -> list[tuple[bool, str]]:
        judges = self.judges
        return super().validation() + [
            (len(self.models or []) >= 2, "`models` needs two or more models (paths or {name, outputs} entries)."),
            (self.show >= 0, f"`show` must be >= 0, got {self.show}."),
            (self.judge_batch_size >= 1, f"`judge_batch_size` must be >= 1, got {self.judge_batch_size}."),
            (self.bootstrap_samples >= 0, f"`bootstrap_samples` must be >= 0, got {self.bootstrap_samples}."),
            (len(judges) <= 1, f"Give one judge, not {' and '.join(f'`{k}`' for k in judges)}."),
            (
                self.resolved_backend == "hf",
                "`simpo-plugin eval` generates in this process (`backend: hf`); for "
                "answers from an inference server, write them to an outputs file and list it as `{name, outputs}`.",
            ),
        ]


# Keys whose change alters the samples (resp. the scores) already saved in `output_dir`.
SAMPLING_KEYS = ("model_name_or_path", "adapter_name_or_path", "template", "default_system", "enable_thinking",
                 "cutoff_len", "dataset", "max_samples", "num_samples", "temperature", "top_p", "max_new_tokens",
                 "seed", "backend", "server_model")  # fmt: skip
SCORING_KEYS = ("reward_model", "reward_template", "reward_function")
# Keys users reach for to give the servers' API key; the key itself comes from `server_api_key_env`.
SECRET_KEYS = ("api_key", "openai_api_key", "server_api_key", "vllm_api_key")


def host_arg_classes() -> tuple[type, type]:
    from llamafactory.hparams import DataArguments, ModelArguments

    return ModelArguments, DataArguments


COMMANDS = {"PairsArguments": "pairs", "EvalArguments": "eval"}


def known_keys(args_class: type = PairsArguments) -> set[str]:
    classes = (args_class, *host_arg_classes())
    return {f.name for cls in classes for f in fields(cls) if f.init}


def check_keys(raw: dict[str, Any], args_class: type = PairsArguments) -> None:
    """Reject keys that are neither the command's nor the host's model/data keys, suggesting the closest one."""
    known = known_keys(args_class)
    command = f"simpo-plugin {COMMANDS.get(args_class.__name__, 'pairs')}"
    for key in raw:
        if key in SECRET_KEYS and key not in known:
            raise PairsConfigError(
                f"`{key}`: an API key never goes in a config file. Put it in an environment variable and name that "
                "variable with `server_api_key_env` (default SIMPO_SERVER_API_KEY)."
            )
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f" Did you mean `{close[0]}`?" if close else ""
            raise PairsConfigError(f"Unknown key `{key}` for `{command}`.{hint} Run `{command} --help` for the keys.")


def parse_args(
    raw: dict[str, Any], args_class: type = PairsArguments, model_path: str | None = None
) -> tuple[Any, "ModelArguments", "DataArguments"]:
    """Validate ``raw`` (a YAML dict with overrides applied) into ``args_class`` and the host's arguments.

    ``model_path`` stands in for ``model_name_or_path`` where a command takes its models from another key.
    """
    check_keys(raw, args_class)
    own_names = {f.name for f in fields(args_class)}
    own = args_class(**{k: v for k, v in raw.items() if k in own_names})
    host = {k: v for k, v in raw.items() if k not in own_names}
    if model_path is not None:
        host["model_name_or_path"] = model_path
    if not host.get("model_name_or_path"):
        raise PairsConfigError("`model_name_or_path` is required: the policy model that writes the responses.")
    if not host.get("dataset"):
        raise PairsConfigError("`dataset` is required: a dataset of dataset_info.json that holds the prompts.")

    from llamafactory.hparams import get_infer_args

    try:
        model_args, data_args, _, _ = get_infer_args(host)
    except ValueError as exc:
        raise PairsConfigError(f"Invalid model or data key: {exc}") from exc
    from .devices import one_device

    one_device(model_args)
    if data_args.streaming:
        raise PairsConfigError("`streaming` is not supported by `simpo-plugin`; remove it.")
    return own, model_args, data_args


def parse_pairs_args(raw: dict[str, Any]) -> tuple[PairsArguments, "ModelArguments", "DataArguments"]:
    return parse_args(raw, PairsArguments)


def fingerprint(pairs_args: PairsArguments, model_args: Any, data_args: Any, backend: str) -> dict[str, dict]:
    """The settings that saved partial results depend on, split by phase."""
    values = {**vars(model_args), **vars(data_args), **asdict(pairs_args), "backend": backend}
    return {
        "sampling": {key: values.get(key) for key in SAMPLING_KEYS},
        "scoring": {key: values.get(key) for key in SCORING_KEYS},
    }
