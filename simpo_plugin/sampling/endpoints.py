"""The endpoints behind :class:`~.server.ServerSampler`: their rotation, the request threads, and errors in one line.

:class:`EndpointPool` hands each request the live endpoint with the fewest in flight (at most ``max_concurrency``
each), counts failures in a row and takes an endpoint out after ``MAX_FAILURES`` (:class:`ServersUnavailable` when
none is left); :class:`RequestPool` runs requests on daemon threads, so an exit never waits for a hung server;
:func:`retryable` tells a failure worth another endpoint (connection errors, timeouts, HTTP 408, 409, 429, 5xx)
from a configuration error, and :func:`short_error` says either in one line. See docs/onpolicy.md,
"Inference servers".
"""

import os
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from ..errors import PairsConfigError, RunStopped


MAX_FAILURES = 3  # failures in a row that take an endpoint out of the rotation
BACKOFF_SECONDS = 1.0  # first retry delay; doubles per attempt of the same request, up to BACKOFF_MAX
BACKOFF_MAX = 30.0
RETRYABLE_STATUS = {408, 409, 429}


class PromptChanged(PairsConfigError):
    """The server echoed other prompt ids than it was sent."""


class ServersUnavailable(RunStopped):
    """Every endpoint left the rotation; the message names each one's last error."""


class RequestPool:
    """``workers`` daemon threads that run submitted calls, each returning a :class:`~concurrent.futures.Future`.

    ``concurrent.futures.ThreadPoolExecutor`` joins its threads when the interpreter exits, so a run stopped by a
    signal or an error waited for every request still blocked in a socket read (up to ``request_timeout``, 600 s
    by default, against a hung server). A daemon thread is not joined: the run exits at once, and the server sees
    the connection close (vLLM takes that as an abort)."""

    def __init__(self, workers: int, name: str = "simpo-server") -> None:
        self.tasks: queue.SimpleQueue = queue.SimpleQueue()
        self.threads = [
            threading.Thread(target=self._work, name=f"{name}_{i}", daemon=True) for i in range(max(1, workers))
        ]
        for thread in self.threads:
            thread.start()

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        future: Future = Future()
        self.tasks.put((future, fn, args))
        return future

    def _work(self) -> None:
        while (task := self.tasks.get()) is not None:
            future, fn, args = task
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args))
            except BaseException as exc:  # noqa: BLE001 - handed to whoever reads the future
                future.set_exception(exc)

    def shutdown(self) -> None:
        """Cancel the calls not started and let each thread end after its current call; does not wait."""
        while True:
            try:
                task = self.tasks.get_nowait()
            except queue.Empty:
                break
            if task is not None:
                task[0].cancel()
        for _ in self.threads:
            self.tasks.put(None)


def base_url(url: str) -> str:
    """``http://host:8000``, ``.../v1`` or ``.../v1/`` -> ``http://host:8000/v1`` (the OpenAI client's base).

    The scheme is checked where the config is read (``GenerationArguments.bad_url``)."""
    url = url.strip().rstrip("/")
    return url if url.endswith("/v1") else f"{url}/v1"


def make_client(url: str, key: str, timeout: float) -> Any:
    """An ``openai.OpenAI`` client for one endpoint, without the client's own retries (the pool retries)."""
    import openai

    return openai.OpenAI(base_url=url, api_key=key, timeout=timeout, max_retries=0)


def api_key(env_name: str) -> str:
    """The API key from the environment variable ``env_name`` ("EMPTY" when unset: servers without a key)."""
    return os.environ.get(env_name, "") or "EMPTY"


def retryable(exc: BaseException) -> bool:
    import openai

    if isinstance(exc, (openai.APIConnectionError, openai.APITimeoutError)):
        return True
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code >= 500 or exc.status_code in RETRYABLE_STATUS
    return False


def short_error(exc: BaseException) -> str:
    """One line for a warning: the status and the server's own message, or for a connection error its root cause
    (``connection refused``, not the client's generic "Connection error.")."""
    import openai

    if isinstance(exc, openai.APIStatusError):
        body = exc.body if isinstance(exc.body, dict) else {}
        message = body.get("message") or (body.get("error") or {}).get("message") if body else None
        return f"HTTP {exc.status_code}: {message or exc.message}".splitlines()[0][:300]
    if isinstance(exc, openai.APITimeoutError):
        return "no answer within `request_timeout`"
    if isinstance(exc, openai.APIConnectionError):
        root = exc
        while root.__cause__ is not None or root.__context__ is not None:
            root = root.__cause__ or root.__context__
        text = str(root).lower()
        for cause in ("connection refused", "connection reset", "name or service not known", "timed out"):
            if cause in text:
                return cause
        return f"connection error ({type(root).__name__}: {root})".splitlines()[0][:300]
    return f"{type(exc).__name__}: {exc}".splitlines()[0][:300]


@dataclass
class Endpoint:
    url: str
    client: Any
    in_flight: int = 0
    failures: int = 0  # in a row
    live: bool = True
    sent: int = 0  # requests handed out so far: each one's ticket
    failed_at: int = 0  # ``sent`` when the last failure was counted
    last_error: str = ""
    served: int = 0


@dataclass
class EndpointPool:
    """The endpoints' rotation: slot accounting, least-loaded choice, failure counting."""

    endpoints: list[Endpoint]
    max_concurrency: int
    warn: Any = print
    lock: threading.Condition = field(default_factory=threading.Condition)
    stopping: threading.Event = field(default_factory=threading.Event)  # set: failures are the caller's stop

    def acquire(self, avoid: Endpoint | None = None) -> tuple[Endpoint, int]:
        """A live endpoint with a free slot (not ``avoid`` when another live one exists), and the request's ticket
        for :meth:`release`; blocks until a slot frees."""
        with self.lock:
            while True:
                live = [e for e in self.endpoints if e.live]
                if not live:
                    raise ServersUnavailable(self.describe_down())
                candidates = [e for e in live if e is not avoid] or live
                free = [e for e in candidates if e.in_flight < self.max_concurrency]
                if free:
                    endpoint = min(free, key=lambda e: (e.in_flight, e.served))
                    endpoint.in_flight += 1
                    endpoint.sent += 1
                    return endpoint, endpoint.sent
                self.lock.wait(timeout=1.0)

    def release(self, endpoint: Endpoint, ticket: int, error: BaseException | None = None) -> None:
        """Free the slot of request ``ticket``. A failure counts toward ``MAX_FAILURES`` in a row; a success ends the
        streak only when it was sent after the last failure was counted (a slow answer to an earlier request says
        nothing about the endpoint now)."""
        with self.lock:
            endpoint.in_flight -= 1
            if error is None:
                endpoint.served += 1
                if ticket > endpoint.failed_at:
                    endpoint.failures = 0
            elif endpoint.live and not self.stopping.is_set():
                endpoint.failures += 1
                endpoint.failed_at = endpoint.sent
                endpoint.last_error = short_error(error)
                if endpoint.failures >= MAX_FAILURES:
                    endpoint.live = False
                    left = sum(e.live for e in self.endpoints)
                    self.warn(
                        f"simpo-plugin pairs: endpoint {endpoint.url} taken out of the rotation after "
                        f"{endpoint.failures} failures in a row (last: {endpoint.last_error}); {left} left."
                    )
            self.lock.notify_all()

    def describe_down(self) -> str:
        causes = "; ".join(f"{e.url} ({e.last_error or 'no answer'})" for e in self.endpoints)
        hint = " (raise `request_timeout` if answers take longer)" if "request_timeout" in causes else ""
        return (
            f"Every inference server failed: {causes}{hint}. The samples finished so far are saved; start the "
            "servers again and rerun the same command to resume."
        )
