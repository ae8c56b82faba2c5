"""The install hint names a command that works for the way simpo-plugin was installed (it is not on PyPI)."""

import json

import pytest

from simpo_plugin.install_hint import editable_source, extra_requirements, install_hint


REQUIRES = [
    "llamafactory<0.10,>=0.9.4",
    'gguf>=0.10; extra == "real"',
    'alpaca-eval>=0.6.6; extra == "eval"',
    "setuptools<80; extra == 'eval'",
    'openai>=1.40; extra == "server"',
    'openai>=1.40; extra == "test"',
]


class FakeDistribution:
    """What ``importlib.metadata`` gives: ``requires`` and ``read_text`` of a metadata file."""

    def __init__(self, direct_url: dict | None) -> None:
        self.requires, self.direct_url = REQUIRES, direct_url

    def read_text(self, name: str) -> str | None:
        return json.dumps(self.direct_url) if name == "direct_url.json" and self.direct_url else None


EDITABLE = {"url": "file:///home/me/src/simpo%20plugin", "dir_info": {"editable": True}}
WHEEL = {"url": "file:///tmp/dist/simpo_plugin-0.4.0-py3-none-any.whl", "archive_info": {}}
FOLDER = {"url": "file:///home/me/src/simpo-plugin", "dir_info": {}}  # `pip install .`: the folder may be gone


def test_the_extra_packages_come_from_the_metadata_with_their_ranges() -> None:
    assert extra_requirements("eval", FakeDistribution(None)) == ["alpaca-eval>=0.6.6", "setuptools<80"]
    assert extra_requirements("server", FakeDistribution(None)) == ["openai>=1.40"]


@pytest.mark.parametrize(
    ("direct_url", "extra", "hint"),
    [
        (EDITABLE, "server", "pip install -e '/home/me/src/simpo plugin[server]'"),
        (EDITABLE, "eval", "pip install -e '/home/me/src/simpo plugin[eval]'"),
        (WHEEL, "server", "pip install 'openai>=1.40'"),
        (WHEEL, "eval", "pip install 'alpaca-eval>=0.6.6' 'setuptools<80'"),
        (FOLDER, "eval", "pip install 'alpaca-eval>=0.6.6' 'setuptools<80'"),
        (None, "server", "pip install 'openai>=1.40'"),  # a wheel from an index writes no direct_url.json
    ],
    ids=["editable-server", "editable-eval", "wheel-server", "wheel-eval", "folder-eval", "no-direct-url"],
)
def test_editable_installs_get_the_extra_from_their_checkout_others_the_packages(direct_url, extra, hint) -> None:
    dist = FakeDistribution(direct_url)
    assert install_hint(extra, dist) == hint
    assert "simpo-plugin[" not in hint  # the name pip cannot find
    assert (editable_source(dist) is not None) is (direct_url is EDITABLE)


def test_the_server_backend_error_and_the_missing_lc_name_the_hint(monkeypatch) -> None:
    import importlib.util
    from types import SimpleNamespace

    from simpo_plugin.errors import PairsConfigError
    from simpo_plugin.evaluation import leaderboard
    from simpo_plugin.sampling import loading

    monkeypatch.setattr(loading, "install_hint", lambda extra: f"HINT({extra})")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "openai" else object())
    with pytest.raises(PairsConfigError) as error:
        loading.check_server(SimpleNamespace(server_model=None), SimpleNamespace(adapter_name_or_path=None), "server")
    assert str(error.value) == "`backend: server` needs the `openai` client, which is not installed: HINT(server)."

    def no_alpaca_eval(*args, **kwargs):
        raise ImportError("No module named 'alpaca_eval'")

    monkeypatch.setattr(leaderboard, "install_hint", lambda extra: f"HINT({extra})")
    monkeypatch.setattr(leaderboard, "lc_win_rate", no_alpaca_eval)
    from simpo_plugin.evaluation.judges import Judgment

    result = leaderboard.comparison_rates([Judgment(0.7)] * 6, [10.0] * 6, [12.0] * 6, None, samples=0)
    expected = "No module named 'alpaca_eval'; `HINT(eval)` installs alpaca-eval for the LC win rate"
    assert result["lc_missing"] == expected
