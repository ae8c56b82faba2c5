"""Sampling on OpenAI-compatible inference servers (vLLM, SGLang, a llama.cpp server, a router in front of them).

One request per prompt: its token ids as the host's template rendered them (never re-tokenized text), ``n``
samples, the prompt's own ``seed`` (:func:`~.samplers.sample_seed`), ``temperature``, ``top_p``, ``max_tokens`` and
the template's stop token ids. A prompt's request is therefore the same whichever endpoint takes it and however
often it is retried; the same request gets the same samples where the servers are batch-invariant (vLLM's
numerics otherwise depend on the batch; docs/onpolicy.md, "The same samples whatever the endpoints").

Requests run on a pool of daemon threads (:class:`RequestPool`: an exit, a signal's or an error's, never waits for
a request blocked on a slow server's socket): up to ``max_concurrency`` in flight per endpoint (to feed its
continuous batching), each taken by the live endpoint with the fewest in flight. A failed request (connection
error, timeout, HTTP 408, 429 or 5xx) is retried with exponential backoff on another endpoint when there is one; an
endpoint that fails ``MAX_FAILURES`` times in a row leaves the rotation (one warning line), and when none is left
the run stops with what it finished saved. Any other HTTP error (a prompt too long for the server, a wrong model
name) is a configuration error that names the prompt and quotes the server.

Where the server returns the sampled token ids (vLLM's ``return_token_ids``), the text is decoded here exactly as
the HF backend decodes it, and the prompt ids it echoes must equal the ids sent (else :class:`PromptChanged`);
elsewhere the server's text is kept and its tokens are counted with the tokenizer.
See docs/onpolicy.md, "Inference servers".
"""

import threading
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, CancelledError, Future, wait
from typing import TYPE_CHECKING, Any

from ..errors import PairsConfigError
from .endpoints import (
    BACKOFF_MAX,
    BACKOFF_SECONDS,
    Endpoint,
    EndpointPool,
    PromptChanged,
    RequestPool,
    ServersUnavailable,
    api_key,
    make_client,
    retryable,
    short_error,
)
from .samplers import Sample, sample_seed, split_at_stop


if TYPE_CHECKING:
    from .prompts import Prompt


class ServerSampler:
    """:class:`~.samplers.Sampler` over OpenAI-compatible ``/v1/completions`` endpoints (see the module docstring).

    Args:
        urls: base URLs (``http://host:port`` or ``.../v1``).
        model: the served model name every request names.
        tokenizer: the host's tokenizer of the same model (decodes returned token ids, counts tokens otherwise).
        stop_ids: the template's stop token ids (sent as ``stop_token_ids``).
        settings: the ``GenerationArguments`` (num_samples, temperature, top_p, max_new_tokens, seed,
            max_concurrency, request_timeout, server_api_key_env).
        warn: where one-line warnings go.
        server: the :class:`~.managed.ManagedServer` that ``close()`` stops (``server_command``), or None.
    """

    def __init__(self, urls: list[str], model: str, tokenizer: Any, stop_ids: list[int], settings: Any,
                 warn: Any = print, server: Any = None) -> None:  # fmt: skip
        self.model, self.tokenizer, self.settings, self.server = model, tokenizer, settings, server
        self.stop_ids = list(stop_ids)
        self.warn = warn
        key = api_key(settings.server_api_key_env)
        endpoints = [Endpoint(url, make_client(url, key, settings.request_timeout)) for url in urls]
        self.pool = EndpointPool(endpoints, settings.max_concurrency, warn)
        self.stopping = self.pool.stopping  # set when the caller stopped: retries give up, failures are not counted
        self.tokenizer_lock = threading.Lock()  # worker threads share one tokenizer

    def describe(self) -> str:
        """The backend in a few words, for the log and ``pairs_report.md``."""
        count = len(self.pool.endpoints)
        return (
            f"backend server, `{self.model}` on {count} endpoint{'s' if count > 1 else ''}, "
            f"max_concurrency {self.settings.max_concurrency}"
        )

    def close(self) -> None:
        """Abort the requests still in flight (their connections close, which a vLLM server takes as an abort),
        then stop the server this sampler started (``server_command``), if any."""
        self.stopping.set()
        for endpoint in self.pool.endpoints:
            endpoint.client.close()
        if self.server is not None:
            self.server.stop()

    @property
    def workers(self) -> int:
        return self.settings.max_concurrency * len(self.pool.endpoints)

    def request(self, prompt: "Prompt") -> dict[str, Any]:
        """The body of one prompt's ``/v1/completions`` request (vLLM extras in ``extra_body``)."""
        s = self.settings
        return {
            "model": self.model,
            "prompt": [list(prompt.ids)],
            "n": s.num_samples,
            "seed": sample_seed(s.seed, prompt.key),
            "temperature": s.temperature,
            "top_p": s.top_p,
            "max_tokens": s.max_new_tokens,
            "extra_body": {"stop_token_ids": self.stop_ids, "return_token_ids": True, "skip_special_tokens": True},
        }

    def to_samples(self, prompt: "Prompt", response: Any) -> list[Sample]:
        choices = sorted(response.choices, key=lambda c: c.index)
        if len(choices) != self.settings.num_samples:
            raise ValueError(f"asked for {self.settings.num_samples} samples, the server returned {len(choices)}")
        samples, stop_ids = [], set(self.stop_ids)
        for choice in choices:
            extra = choice.model_extra or {}
            truncated = choice.finish_reason == "length"
            if extra.get("token_ids") is not None:
                tokens, _ = split_at_stop(list(extra["token_ids"]), stop_ids)
                with self.tokenizer_lock:
                    text = self.tokenizer.decode(tokens, skip_special_tokens=True)
                samples.append(Sample(text, len(tokens), truncated))
            else:
                text = choice.text or ""
                with self.tokenizer_lock:
                    count = len(self.tokenizer(text, add_special_tokens=False)["input_ids"])
                samples.append(Sample(text, count, truncated))
            echoed = extra.get("prompt_token_ids")
            if echoed is not None and list(echoed) != list(prompt.ids):
                raise PromptChanged(
                    f"The server sampled {prompt.source} from other prompt ids than the template's ({len(echoed)} "
                    f"echoed, {len(prompt.ids)} sent): a server or router that re-tokenizes or rewrites prompts "
                    "makes the pairs off-policy. Send the ids unchanged (vLLM's /v1/completions does)."
                )
        return samples

    def sample_one(self, prompt: "Prompt") -> list[Sample]:
        """One prompt's samples, retried on other endpoints until one answers (see the module docstring)."""
        body, attempt, avoid = self.request(prompt), 0, None
        while True:
            if self.stopping.is_set():
                raise CancelledError
            endpoint, ticket = self.pool.acquire(avoid)
            try:
                response = endpoint.client.completions.create(**body)
                samples = self.to_samples(prompt, response)
            except Exception as exc:  # noqa: BLE001 - sorted below: retried, or a configuration error
                if self.stopping.is_set():  # the caller stopped and closed the connections: not a failure
                    self.pool.release(endpoint, ticket)
                    raise CancelledError from exc
                if isinstance(exc, PromptChanged):
                    self.pool.release(endpoint, ticket)
                    raise
                if not (retryable(exc) or isinstance(exc, ValueError)):
                    self.pool.release(endpoint, ticket)
                    raise PairsConfigError(
                        f"The server at {endpoint.url} refused the request for {prompt.source} "
                        f"({len(prompt.ids)} prompt tokens, max_tokens {self.settings.max_new_tokens}): "
                        f"{short_error(exc)}. Check `server_model`, `max_new_tokens` and the server's "
                        "--max-model-len."
                    ) from exc
                self.pool.release(endpoint, ticket, exc)
                avoid, attempt = endpoint, attempt + 1
                time.sleep(min(BACKOFF_SECONDS * 2 ** (attempt - 1), BACKOFF_MAX))
                continue
            self.pool.release(endpoint, ticket)
            return samples

    def sample(self, prompts: list["Prompt"]) -> list[list[Sample]]:
        results = dict(self.sample_chunks([prompts]))
        return results[0]

    def sample_chunks(self, chunks: list[list["Prompt"]]) -> Iterator[tuple[int, list[list[Sample]]]]:
        """Yield ``(chunk index, its samples)`` as chunks finish; requests of later chunks keep the servers busy
        meanwhile. At most ``2 * workers`` requests wait in the queue, so chunks finish roughly in order."""
        self.stopping.clear()
        pending: dict[Future, tuple[int, int]] = {}
        results: dict[int, list[Any]] = {k: [None] * len(chunk) for k, chunk in enumerate(chunks)}
        left = {k: len(chunk) for k, chunk in enumerate(chunks)}
        queue = ((k, j, prompt) for k, chunk in enumerate(chunks) for j, prompt in enumerate(chunk))
        executor = RequestPool(self.workers)
        try:
            for k in [k for k, n in left.items() if n == 0]:
                yield k, []
            while True:
                while len(pending) < 2 * self.workers and (item := next(queue, None)) is not None:
                    k, j, prompt = item
                    pending[executor.submit(self.sample_one, prompt)] = (k, j)
                if not pending:
                    return
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    k, j = pending.pop(future)
                    results[k][j] = future.result()
                    left[k] -= 1
                    if left[k] == 0:
                        yield k, results.pop(k)
        finally:
            self.stopping.set()
            executor.shutdown()


def served_models(url: str, key: str, timeout: float = 10.0) -> list[str]:
    """The model names ``GET {url}/models`` lists; raises what the client raises when the server does not answer."""
    with make_client(url, key, timeout) as client:
        return [model.id for model in client.models.list().data]


def wait_for_servers(urls: list[str], key: str, timeout: float, log: Any = print,
                     alive: Any = None) -> dict[str, list[str]]:  # fmt: skip
    """Poll every endpoint's model list until all answer or ``timeout`` seconds pass; returns url -> models.

    Endpoints still silent at the deadline are left out (one warning each); when none answered, raises
    :class:`ServersUnavailable`. ``alive`` (optional) is called each round and raises when a managed server died.
    """
    start, answered, errors, last_note = time.monotonic(), {}, {}, 0.0
    while True:
        for url in urls:
            if url in answered:
                continue
            try:
                answered[url] = served_models(url, key)
            except Exception as exc:  # noqa: BLE001 - any failure means "not ready yet"
                errors[url] = short_error(exc)
        if len(answered) == len(urls):
            return answered
        if alive is not None:
            alive()
        waited = time.monotonic() - start
        if waited >= timeout:
            break
        if waited - last_note >= 30:
            silent = ", ".join(f"{u} ({errors[u]})" for u in urls if u not in answered)
            log(f"simpo-plugin pairs: waiting for inference servers ({waited:.0f} s of {timeout:.0f}): {silent}")
            last_note = waited
        time.sleep(1.0)
    if not answered:  # one message naming each endpoint once
        raise ServersUnavailable(
            "No inference server answered within `server_start_timeout` "
            f"({timeout:.0f} s): " + "; ".join(f"{u} ({errors[u]})" for u in urls) + ". Start them first, or check "
            "`server_urls`."
        )
    for url in urls:
        if url not in answered:
            log(f"simpo-plugin pairs: endpoint {url} did not answer in {timeout:.0f} s ({errors[url]}); left out.")
    return answered


def pick_model(models: dict[str, list[str]], wanted: str | None) -> str:
    """The served model name to request: ``server_model``, else the one model every endpoint serves.

    Raises:
        PairsConfigError: ``server_model`` is not served by an endpoint, or the endpoints serve several models
            (or different ones) and ``server_model`` is unset; the message lists what each serves.
    """
    listing = "; ".join(f"{url} serves {', '.join(names) or 'nothing'}" for url, names in models.items())
    if wanted:
        missing = [url for url, names in models.items() if wanted not in names]
        if missing:
            raise PairsConfigError(f"`server_model: {wanted}` is not served by {', '.join(missing)} ({listing}).")
        return wanted
    served = {name for names in models.values() for name in names}
    if len(served) == 1 and all(models.values()):
        return served.pop()
    raise PairsConfigError(f"Set `server_model` to the served model to sample from ({listing}).")
