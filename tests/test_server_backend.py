"""`backend: server` against small OpenAI-compatible servers in this process: the same pairs whatever the number of
endpoints, their failures or a restart; retries, rotation, concurrency, API key, errors, `server_command`.

The real vLLM (on CPU, SmolLM2) runs the same checks in test_server_vllm.py.
"""

import json
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from fake_server import FakeServer
from pairs_cases import pairs_config, write_prompt_datasets

from simpo_plugin.errors import PairsConfigError, RunStopped
from simpo_plugin.pairs import build_pairs
from simpo_plugin.pairs.args import PairsArguments
from simpo_plugin.sampling import endpoints, server
from simpo_plugin.sampling.managed import split_command
from simpo_plugin.sampling.server import pick_model


FAKE = Path(__file__).with_name("fake_server.py")


@pytest.fixture(autouse=True)
def quick_backoff(monkeypatch) -> None:
    monkeypatch.setattr(server, "BACKOFF_SECONDS", 0.01)


@pytest.fixture(scope="module")
def prompt_dir(tmp_path_factory) -> Path:
    return write_prompt_datasets(tmp_path_factory.mktemp("prompts"))


def run(tiny_assets, prompt_dir, output_dir: Path, urls: list[str], **overrides) -> tuple[bytes, object]:
    settings = {"backend": "server", "server_urls": urls, "max_new_tokens": 16, "num_samples": 4, "batch_size": 2,
                "max_concurrency": 2, **overrides}  # fmt: skip
    config = pairs_config(tiny_assets["model"], prompt_dir, output_dir, **settings)
    stats = build_pairs(config)
    return (output_dir / "pairs.json").read_bytes(), stats


@pytest.fixture(scope="module")
def reference(tiny_assets, prompt_dir, tmp_path_factory) -> tuple[bytes, object, FakeServer]:
    with FakeServer() as one:
        data, stats = run(tiny_assets, prompt_dir, tmp_path_factory.mktemp("one"), [one.url])
        return data, stats, one


def test_one_endpoint_makes_real_pairs_with_the_template_ids(reference, tiny_assets, prompt_dir, tmp_path) -> None:
    data, stats, one = reference
    rows = json.loads(data)
    assert stats.prompts == 9 and stats.samples == 36 and len(rows) == stats.kept > 0
    body = one.bodies[0]
    assert body["n"] == 4 and body["max_tokens"] == 16 and body["temperature"] == 0.8 and body["top_p"] == 0.95
    assert body["return_token_ids"] is True and body["model"] == "fake-model" and len(body["prompt"]) == 1
    # one request per prompt, each with its own seed; the prompt is sent as the template's token ids
    assert len(one.bodies) == 9 and len({b["seed"] for b in one.bodies}) == 9
    from llamafactory.data import get_template_and_fix_tokenizer
    from llamafactory.hparams import get_infer_args
    from llamafactory.model import load_tokenizer

    from simpo_plugin.sampling.prompts import load_prompts

    config = pairs_config(tiny_assets["model"], prompt_dir, tmp_path)
    model_args, data_args, _, _ = get_infer_args({k: config[k] for k in ("model_name_or_path", "template",
                                                                          "dataset", "dataset_dir")})  # fmt: skip
    tokenizer = load_tokenizer(model_args)["tokenizer"]
    template = get_template_and_fix_tokenizer(tokenizer, data_args)
    prompts = load_prompts(model_args, data_args, template, tokenizer).prompts
    assert sorted(b["prompt"][0] for b in one.bodies) == sorted(p.ids for p in prompts)
    assert body["stop_token_ids"] == template.get_stop_token_ids(tokenizer)


def test_two_endpoints_give_the_same_bytes_and_share_the_work(reference, tiny_assets, prompt_dir, tmp_path) -> None:
    with FakeServer() as a, FakeServer() as b:
        a.delay = b.delay = 0.05
        data, _ = run(tiny_assets, prompt_dir, tmp_path, [a.url, b.url.removesuffix("/v1")])
    assert data == reference[0]
    assert len(a.bodies) + len(b.bodies) == 9 and len(a.bodies) >= 2 and len(b.bodies) >= 2
    assert a.max_in_flight <= 2 and b.max_in_flight <= 2  # max_concurrency per endpoint


def test_a_failing_endpoint_leaves_the_rotation_and_the_bytes_stay(reference, tiny_assets, prompt_dir, tmp_path,
                                                                     caplog) -> None:  # fmt: skip
    with FakeServer() as good, FakeServer() as bad:
        good.delay = 0.05
        bad.fail_after = 1  # answers once, then 500 (a dead engine)
        data, _ = run(tiny_assets, prompt_dir, tmp_path, [bad.url, good.url])
    assert data == reference[0]
    assert bad.completions >= endpoints.MAX_FAILURES + 1
    assert len(bad.bodies) <= 1 + endpoints.MAX_FAILURES + 1  # out after 3 failures in a row (+ 1 already in flight)
    assert f"endpoint {bad.url} taken out of the rotation after 3 failures in a row (last: HTTP 500" in caplog.text


def test_a_closed_port_and_a_timeout_are_retried_elsewhere(reference, tiny_assets, prompt_dir, tmp_path,
                                                            caplog) -> None:  # fmt: skip
    closed = FakeServer()
    closed_url = closed.url
    closed.httpd.server_close()  # nothing listens there any more
    with FakeServer() as slow, FakeServer() as good:
        slow.delay = 3.0
        data, _ = run(tiny_assets, prompt_dir, tmp_path, [good.url, slow.url], request_timeout=0.5)
    assert data == reference[0]
    with FakeServer() as good:  # a dead endpoint at the start is waited for, then left out
        data, _ = run(tiny_assets, prompt_dir, tmp_path / "b", [closed_url, good.url], server_start_timeout=1)
    assert data == reference[0]
    assert f"endpoint {closed_url} did not answer in 1 s (connection refused); left out." in caplog.text
    with pytest.raises(RunStopped) as error:  # none answers: one message naming each endpoint once
        run(tiny_assets, prompt_dir, tmp_path / "c", [closed_url], server_start_timeout=1)
    assert str(error.value).count(closed_url) == 1 and "(connection refused)" in str(error.value)
    said = [r.getMessage() for r in caplog.records if "recap" not in r.getMessage()]  # the recap restates it
    assert sum(f"endpoint {closed_url} did not answer" in m for m in said) == 1


def test_every_endpoint_gone_stops_the_run_and_the_rerun_resumes(reference, tiny_assets, prompt_dir,
                                                                  tmp_path) -> None:  # fmt: skip
    with FakeServer() as dying:
        dying.fail_after = 4
        with pytest.raises(RunStopped, match=r"Every inference server failed: .*HTTP 500: engine failure.*rerun"):
            run(tiny_assets, prompt_dir, tmp_path, [dying.url])
    saved = (tmp_path / "parts" / "samples.all.jsonl").read_text().splitlines()
    assert 2 <= len(saved) <= 4 and not (tmp_path / "pairs.json").exists()
    with FakeServer() as fresh:
        data, _ = run(tiny_assets, prompt_dir, tmp_path, [fresh.url])
    assert data == reference[0] and len(fresh.bodies) == 9 - len(saved)


def test_a_refused_request_names_the_prompt_and_the_server(tiny_assets, prompt_dir, tmp_path) -> None:
    with FakeServer() as one:
        with pytest.raises(PairsConfigError, match=r"refused the request for .*prompt tokens, max_tokens 5000\): "
                           r"HTTP 400: This model's maximum context length is 4096"):  # fmt: skip
            run(tiny_assets, prompt_dir, tmp_path, [one.url], max_new_tokens=5000)
        assert len(one.bodies) <= 4  # not retried: a 400 is the config's fault


def test_a_server_without_token_ids_gives_the_same_pairs_from_its_text(reference, tiny_assets, prompt_dir,
                                                                        tmp_path) -> None:  # fmt: skip
    """SGLang- or llama.cpp-like answers: text and finish reason only; tokens are counted with the tokenizer."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_assets["model"])
    with FakeServer() as one:
        one.text_only = tokenizer
        data, stats = run(tiny_assets, prompt_dir, tmp_path, [one.url])
    assert data == reference[0] and stats.kept == reference[1].kept
    lines = [json.loads(line) for line in (tmp_path / "candidates.jsonl").read_text().splitlines()]
    counted = [len(tokenizer(c["response"], add_special_tokens=False)["input_ids"]) for c in lines]
    assert [c["tokens"] for c in lines] == counted and sum(counted) > 0
    assert sum("truncated" in c["flags"] for c in lines) == reference[1].truncated_samples > 0


def test_a_server_that_changes_the_prompt_ids_is_an_error(tiny_assets, prompt_dir, tmp_path) -> None:
    with FakeServer() as one:
        one.echo_prefix = [1]  # a second BOS, as a server that re-tokenizes text would add
        with pytest.raises(PairsConfigError, match=r"other prompt ids than the template's \(\d+ echoed, \d+ sent\)"):
            run(tiny_assets, prompt_dir, tmp_path, [one.url])


def test_the_api_key_comes_from_the_environment_only(tiny_assets, prompt_dir, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("MY_VLLM_KEY", "s3cret")
    with FakeServer() as one:
        run(tiny_assets, prompt_dir, tmp_path, [one.url], server_api_key_env="MY_VLLM_KEY", max_samples=1)
    assert one.headers and all(h["authorization"] == "Bearer s3cret" for h in one.headers)
    for key in ("api_key", "openai_api_key"):
        with pytest.raises(
            PairsConfigError, match=f"`{key}`: an API key never goes in a config file.*server_api_key_env"
        ):
            build_pairs({**pairs_config(tiny_assets["model"], prompt_dir, tmp_path), key: "x"})


def test_a_resumed_run_keeps_its_served_model(tiny_assets, prompt_dir, tmp_path) -> None:
    """Samples of one served model (an adapter, say) never mix with another's: `server_model` is a sampling key."""
    with FakeServer() as one:
        run(tiny_assets, prompt_dir, tmp_path, [one.url], max_samples=2)
        with pytest.raises(PairsConfigError, match=r"server_model=None, this run has server_model='fake-model'"):
            run(tiny_assets, prompt_dir, tmp_path, [one.url], max_samples=2, server_model="fake-model")


def test_server_model_is_checked_and_picked() -> None:
    assert pick_model({"u1": ["m"], "u2": ["m"]}, None) == "m"
    assert pick_model({"u1": ["m", "lora"]}, "lora") == "lora"
    with pytest.raises(PairsConfigError, match=r"Set `server_model` .*u1 serves a, b"):
        pick_model({"u1": ["a", "b"]}, None)
    with pytest.raises(PairsConfigError, match=r"`server_model: x` is not served by u2 "):
        pick_model({"u1": ["x"], "u2": ["y"]}, "x")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"backend": "vllm"}, "`backend: vllm` (vLLM inside this process) was replaced by `backend: server`"),
        ({"backend": "server"}, "`backend: server` needs `server_urls`"),
        ({"backend": "hf", "server_urls": "http://x:1"}, "are for `backend: server`"),
        ({"server_urls": "http://x:1", "server_command": "v --port {port}"}, "not both"),
        ({"server_urls": "http://x:1", "max_concurrency": 0}, "`max_concurrency` must be >= 1"),
        ({"server_urls": "http://x:1", "request_timeout": 0}, "`request_timeout` must be > 0"),
        ({"server_urls": "http://x:1", "max_concurrency": "8"}, "`max_concurrency` must be an integer"),
        ({"server_urls": "http://x:1/v1,http://x:1/"}, "`server_urls` lists `http://x:1/` twice"),
        ({"server_command": "vllm serve {model}"}, "`server_command` must contain `{port}`"),
        ({"server_command": "vllm serve {model} --port {port} --x {gpu}"}, "placeholders {model} and {port} only"),
        ({"server_command": "no-such-server-xyz --port {port}"}, "`no-such-server-xyz` is not on PATH"),
        (
            {"server_command": "A=1 venv/bin/python -m vllm --port {port}"},
            "`venv/bin/python` does not exist (a relative path is taken from the working directory, ",
        ),
    ],
)
def test_bad_server_keys_name_the_key(overrides, message) -> None:
    with pytest.raises(PairsConfigError) as error:
        PairsArguments(output_dir="o", reward_function="m:f", **overrides)
    assert message in str(error.value)


def test_eval_says_where_server_answers_go() -> None:
    from simpo_plugin.evaluation.args import EvalArguments

    with pytest.raises(PairsConfigError, match=r"`simpo-plugin eval` generates in this process .*\{name, outputs\}"):
        EvalArguments(output_dir="o", models=["a", "b"], reward_function="m:f", server_urls="http://x:1")


def test_server_urls_take_a_list_or_commas_and_auto_picks_server() -> None:
    args = PairsArguments(output_dir="o", reward_function="m:f", server_urls="http://a:1/v1, http://b:2")
    assert args.server_urls == ["http://a:1/v1", "http://b:2"] and args.resolved_backend == "server"
    assert PairsArguments(output_dir="o", reward_function="m:f").resolved_backend == "hf"
    assert endpoints.base_url("http://b:2/") == "http://b:2/v1"
    with pytest.raises(PairsConfigError, match="`server_urls`: `b:2` is not an http"):
        PairsArguments(output_dir="o", reward_function="m:f", server_urls="http://a:1,b:2")


def test_server_command_starts_waits_and_stops(reference, tiny_assets, prompt_dir, tmp_path) -> None:
    command = f"FAKE_ENV=1 {sys.executable} {FAKE} --port {{port}} --model {{model}} --startup-delay 1"
    data, _ = run(tiny_assets, prompt_dir, tmp_path, None, server_command=command)
    assert data == reference[0]
    log = (tmp_path / "server.log").read_text()  # the fake server serves `{model}` under that name
    port = int(log.split("fake server on http://127.0.0.1:")[1].split("/")[0])
    with pytest.raises(OSError):  # stopped at the end: nothing listens on its port
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_server_command_that_dies_quotes_its_log(tiny_assets, prompt_dir, tmp_path) -> None:
    command = f"{sys.executable} {FAKE} --port {{port}} --exit-at-once"
    with pytest.raises(PairsConfigError, match=r"exited with status 3 before answering(.|\n)*cannot load the model"):
        run(tiny_assets, prompt_dir, tmp_path, None, server_command=command)


def test_sigterm_stops_the_run_and_its_server(tiny_assets, prompt_dir, tmp_path) -> None:
    """With requests in flight: they are dropped, not counted as the endpoint's failures (no rotation warning),
    and the server is stopped at once (its requests take 2 s each; the run is gone long before they would end)."""
    command = f"{sys.executable} {FAKE} --port {{port}} --model {{model}} --delay 2"
    config = pairs_config(tiny_assets["model"], prompt_dir, tmp_path, backend="server", server_command=command,
                          max_concurrency=4, batch_size=1)  # fmt: skip
    (tmp_path / "pairs.yaml").write_text(yaml.safe_dump(config))
    cli = str(Path(sys.executable).with_name("simpo-plugin"))
    client = subprocess.Popen([cli, "pairs", str(tmp_path / "pairs.yaml")], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)  # fmt: skip
    part = tmp_path / "parts" / "samples.all.jsonl"
    deadline = time.monotonic() + 120
    while not (part.exists() and part.read_text().count("\n") >= 1):
        assert client.poll() is None and time.monotonic() < deadline
        time.sleep(0.1)
    client.send_signal(signal.SIGTERM)
    output, _ = client.communicate(timeout=60)
    assert client.returncode == 143 and "interrupted; run the same command again to resume" in output
    assert "Stopping the server of `server_command`" in output
    assert "taken out of the rotation" not in output and "Every inference server failed" not in output
    port = int((tmp_path / "server.log").read_text().split("fake server on http://127.0.0.1:")[1].split("/")[0])
    with pytest.raises(OSError):  # the server it started is gone too
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


@pytest.mark.parametrize("stop", ["sigterm", "refused"])
def test_a_stopped_run_exits_without_waiting_for_a_hung_server(tiny_assets, prompt_dir, tmp_path, stop) -> None:
    """Servers the user runs (`server_urls`): a SIGTERM, or an error on another endpoint, ends the run at once
    although a request is still in flight on a server that answers in 60 s (the interpreter's exit joined
    `ThreadPoolExecutor` workers, so the run waited out the hung request)."""
    with FakeServer() as hung, FakeServer() as other:
        hung.delay = 60.0
        other.delay = 1.0  # answers after the first requests went out to both endpoints
        other.fail_status = 400 if stop == "refused" else None
        config = pairs_config(tiny_assets["model"], prompt_dir, tmp_path, backend="server", max_concurrency=2,
                              server_urls=[hung.url, other.url], batch_size=1)  # fmt: skip
        (tmp_path / "pairs.yaml").write_text(yaml.safe_dump(config))
        cli = str(Path(sys.executable).with_name("simpo-plugin"))
        client = subprocess.Popen([cli, "pairs", str(tmp_path / "pairs.yaml")], stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True)  # fmt: skip
        deadline = time.monotonic() + 120
        while hung.in_flight == 0:
            assert client.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        start = time.monotonic()
        if stop == "sigterm":
            client.send_signal(signal.SIGTERM)
        output, _ = client.communicate(timeout=120)
        waited = time.monotonic() - start
        hung.delay = 0.0
    if stop == "sigterm":
        assert client.returncode == 143 and "interrupted; run the same command again to resume" in output
    else:
        assert client.returncode != 0 and "refused the request" in output, output[-2000:]
    assert waited < 20, f"the run took {waited:.0f} s to exit with a request in flight"


def test_an_adapter_on_a_server_must_be_named(tiny_assets, prompt_dir, tmp_path) -> None:
    config = pairs_config(tiny_assets["model"], prompt_dir, tmp_path, server_urls="http://127.0.0.1:9/v1",
                          adapter_name_or_path=str(tmp_path))  # fmt: skip
    with pytest.raises(PairsConfigError, match=r"set `server_model` to its served name"):
        build_pairs(config)


def test_split_command() -> None:
    argv, env = split_command("A=1 B='x y' vllm serve {model} --port {port}", "/m dir", 81)
    assert argv == ["vllm", "serve", "/m dir", "--port", "81"] and env == {"A": "1", "B": "x y"}
    with pytest.raises(PairsConfigError, match="must contain `{port}`"):
        split_command("vllm serve {model}", "m", 1)
    with pytest.raises(PairsConfigError, match="placeholders {model} and {port} only"):
        split_command("vllm serve {path} --port {port}", "m", 1)


def test_pool_waits_for_a_free_slot_and_prefers_the_least_loaded() -> None:
    pool = endpoints.EndpointPool([endpoints.Endpoint("a", None), endpoints.Endpoint("b", None)], max_concurrency=1)
    (first, _), (second, ticket) = pool.acquire(), pool.acquire()
    assert {first.url, second.url} == {"a", "b"}
    got = []
    waiter = threading.Thread(target=lambda: got.append(pool.acquire()[0]))
    waiter.start()
    time.sleep(0.2)
    assert not got  # both slots taken
    pool.release(second, ticket)
    waiter.join(timeout=5)
    assert got == [second]


def test_a_late_answer_to_an_earlier_request_does_not_end_a_failure_streak() -> None:
    """Answers arrive out of order: a success sent before a failure was seen says nothing about the endpoint now."""
    warnings: list[str] = []
    endpoint = endpoints.Endpoint("a", None)
    pool = endpoints.EndpointPool([endpoint, endpoints.Endpoint("b", None)], max_concurrency=4, warn=warnings.append)
    slow = pool.acquire(avoid=pool.endpoints[1])  # answered last, successfully
    failed = [pool.acquire(avoid=pool.endpoints[1]) for _ in range(endpoints.MAX_FAILURES - 1)]
    for slot in failed:
        pool.release(*slot, RuntimeError("HTTP 500"))
    pool.release(*slow)
    assert endpoint.failures == endpoints.MAX_FAILURES - 1 and endpoint.served == 1
    later = pool.acquire(avoid=pool.endpoints[1])  # sent after the failures: its success ends the streak
    pool.release(*later)
    assert endpoint.failures == 0 and endpoint.live
    streak = [pool.acquire(avoid=pool.endpoints[1]) for _ in range(endpoints.MAX_FAILURES + 1)]
    pool.release(*streak[0])  # a success sent before the streak's failures
    for slot in streak[1:]:
        pool.release(*slot, RuntimeError("HTTP 500"))
    assert not endpoint.live and len(warnings) == 1 and "after 3 failures in a row" in warnings[0]
