"""The keys ``simpo-plugin pairs`` and ``eval`` share, and how a command's config is read and checked.

:class:`GenerationArguments` holds the sampling, server and scorer keys both commands take; each command's own
dataclass extends it (:class:`simpo_plugin.pairs.PairsArguments`, :class:`simpo_plugin.evaluation.EvalArguments`)
and names itself in ``command``. The host's ``ModelArguments`` and ``DataArguments`` are reused as they are
(``model_name_or_path``, ``adapter_name_or_path``, ``template``, ``dataset``, ``dataset_dir``, ``max_samples``,
``cutoff_len``, ...), so a config reads like a ``llamafactory-cli`` config. Any other key is an error that names it.
"""

import difflib
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from ..errors import PairsConfigError
from ..host_keys import check_values, moved_key


if TYPE_CHECKING:
    from llamafactory.hparams import DataArguments, ModelArguments


BACKENDS = ("auto", "hf", "server")


VLLM_REPLACED = (
    "`backend: vllm` (vLLM inside this process) was replaced by `backend: server`: vLLM cannot share an environment "
    "with LLaMA-Factory 0.9.5 (their transformers pins exclude each other). Serve the model with vLLM and give "
    '`server_urls`, or let the run start it with `server_command` (docs/onpolicy.md, "Inference servers").'
)


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

    command: ClassVar[str] = "pairs"  # the subcommand whose keys these are, for messages (`simpo-plugin pairs`)

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
        from .endpoints import base_url

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
        from .managed import check_command

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


# Keys users reach for to give the servers' API key; the key itself comes from `server_api_key_env`.
SECRET_KEYS = ("api_key", "openai_api_key", "server_api_key", "vllm_api_key")


def host_arg_classes() -> tuple[type, type]:
    from llamafactory.hparams import DataArguments, ModelArguments

    return ModelArguments, DataArguments


def known_keys(args_class: type) -> set[str]:
    """The command's own keys and the host's model and data keys."""
    classes = (args_class, *host_arg_classes())
    return {f.name for cls in classes for f in fields(cls) if f.init}


def check_keys(raw: dict[str, Any], args_class: type) -> None:
    """Reject keys that are neither the command's nor the host's model/data keys, suggesting the closest one."""
    known = known_keys(args_class)
    command = f"simpo-plugin {args_class.command}"
    for key in raw:
        if key in SECRET_KEYS and key not in known:
            raise PairsConfigError(
                f"`{key}`: an API key never goes in a config file. Put it in an environment variable and name that "
                "variable with `server_api_key_env` (default SIMPO_SERVER_API_KEY)."
            )
        if key not in known and moved_key(key):
            raise PairsConfigError(f"{moved_key(key)} (in the config of `{command}`).")
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f" Did you mean `{close[0]}`?" if close else ""
            raise PairsConfigError(f"Unknown key `{key}` for `{command}`.{hint} Run `{command} --help` for the keys.")


def parse_args(
    raw: dict[str, Any], args_class: type, model_path: str | None = None
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

    check_values(host, list(host_arg_classes()), PairsConfigError)
    try:
        model_args, data_args, _, _ = get_infer_args(host)
    except ValueError as exc:
        raise PairsConfigError(f"Invalid model or data key: {exc}") from exc
    from .devices import one_device

    one_device(model_args)
    if data_args.streaming:
        raise PairsConfigError("`streaming` is not supported by `simpo-plugin`; remove it.")
    return own, model_args, data_args
