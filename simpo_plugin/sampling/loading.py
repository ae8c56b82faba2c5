"""A sampler for a backend, ready to use: the policy loaded in this process, or inference servers answering.

:func:`load_sampler` is what ``simpo-plugin pairs`` and ``eval`` call: ``hf`` loads the policy through the host's
``load_model`` (its template gives the stop tokens) into an :class:`HFSampler`; ``server`` connects to
``server_urls`` or starts ``server_command`` (:class:`ManagedServer`), waits until they answer and returns a
:class:`ServerSampler` whose ``close()`` stops what it started.
"""

import importlib.util
import time
from pathlib import Path
from typing import Any

from llamafactory.extras import logging

from ..errors import PairsConfigError
from ..install_hint import install_hint
from .endpoints import api_key, base_url
from .managed import ManagedServer
from .samplers import HFSampler, Sampler
from .server import ServerSampler, pick_model, wait_for_servers


logger = logging.get_logger("llamafactory.simpo.pairs")


def load_sampler(
    backend: str, settings: Any, model_args: Any, data_args: Any, output_dir: Path | None = None
) -> Sampler:
    """The backend's sampler; for ``server``, the endpoints are waited for (a ``server_command`` server is started
    first, its log in ``output_dir/server.log``) and the sampler's ``close()`` stops what was started."""
    from llamafactory.data import get_template_and_fix_tokenizer
    from llamafactory.hparams import FinetuningArguments
    from llamafactory.model import load_model, load_tokenizer

    tokenizer = load_tokenizer(model_args)["tokenizer"]
    template = get_template_and_fix_tokenizer(tokenizer, data_args)
    stop_ids = template.get_stop_token_ids(tokenizer)
    if backend == "server":
        return open_servers(settings, model_args.model_name_or_path, tokenizer, stop_ids, output_dir or Path("."))
    model = load_model(tokenizer, model_args, FinetuningArguments(), is_trainable=False)
    return HFSampler(model, tokenizer, stop_ids, settings)


def open_servers(settings: Any, model_path: str, tokenizer: Any, stop_ids: list[int], output_dir: Path) -> Sampler:
    """Connect to ``server_urls``, or start ``server_command``; wait until they answer; a :class:`ServerSampler`."""
    managed = None
    if settings.server_command:
        managed = ManagedServer(settings.server_command, model_path, output_dir / "server.log", logger.info_rank0)
        managed.__enter__()
        urls = [managed.url]
        logger.info_rank0(f"Started the server of `server_command` (log: {managed.log_path}); waiting for it.")
    else:
        urls = [base_url(url) for url in settings.server_urls]
    try:
        start = time.monotonic()
        models = wait_for_servers(urls, api_key(settings.server_api_key_env), settings.server_start_timeout,
                                  logger.warning_rank0, managed.check_alive if managed else None)  # fmt: skip
        model = pick_model(models, settings.server_model)
        logger.info_rank0(
            f"{len(models)} inference server(s) answered after {time.monotonic() - start:.0f} s, serving `{model}`: "
            f"{', '.join(models)} ({settings.max_concurrency} requests in flight each)"
        )
        return ServerSampler(list(models), model, tokenizer, stop_ids, settings, logger.warning_rank0, managed)
    except BaseException:
        if managed is not None:
            managed.stop()
        raise


def check_server(settings: Any, model_args: Any, backend: str) -> None:
    """``backend: server`` needs the ``openai`` client; a LoRA policy on a server is the adapter the server serves,
    which must be named (``server_model``)."""
    if backend == "server" and importlib.util.find_spec("openai") is None:
        raise PairsConfigError(
            f"`backend: server` needs the `openai` client, which is not installed: {install_hint('server')}."
        )
    if backend == "server" and model_args.adapter_name_or_path and not settings.server_model:
        raise PairsConfigError(
            "`adapter_name_or_path` with `backend: server`: the server must serve the adapter (vLLM: `--enable-lora "
            "--lora-modules policy=ADAPTER_DIR`); set `server_model` to its served name (e.g. `policy`)."
        )
