"""The docs say what is true: no unfilled placeholders, and every config they show parses as the command reads it."""

import itertools
import re
from dataclasses import fields
from pathlib import Path

import pytest
import yaml


pytestmark = pytest.mark.host  # the host's contract: `make test-lowest` runs it too


ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]
PLACEHOLDER = re.compile(r"\b[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+\b|\b(?:TODO|TBD|FIXME|XXX)\b")


def prose(text: str) -> str:
    """The text outside fenced code, inline code and link targets (where names like `SIMPO_PLUGIN_DISABLE` live)."""
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    text = re.sub(r"`[^`\n]*`", "", text)
    return re.sub(r"\]\([^)]*\)", "]", text)


def yaml_blocks() -> list[tuple[str, dict]]:
    found = []
    for path in DOCS:
        for index, block in enumerate(re.findall(r"```yaml\n(.*?)```", path.read_text(encoding="utf-8"), flags=re.S)):
            found.append((f"{path.name}#{index}", yaml.safe_load(block)))
    return found


@pytest.mark.parametrize("path", DOCS, ids=lambda path: path.name)
def test_no_unfilled_placeholders(path: Path) -> None:
    assert not PLACEHOLDER.findall(prose(path.read_text(encoding="utf-8")))


def test_there_are_configs_to_check() -> None:
    assert sum(config.get("stage") == "simpo" for _, config in yaml_blocks()) >= 2


@pytest.mark.parametrize(("where", "config"), yaml_blocks(), ids=[where for where, _ in yaml_blocks()])
def test_every_config_in_the_docs_parses(where: str, config: dict) -> None:
    if config.get("stage") == "simpo":
        from llamafactory.hparams import DataArguments, FinetuningArguments, GeneratingArguments, ModelArguments
        from transformers import HfArgumentParser

        from simpo_plugin.data import check_registered, resolve_dataset_dir
        from simpo_plugin.host.config_keys import check_keys
        from simpo_plugin.train.hparams import SimPOArguments

        check_keys(config, SimPOArguments, "simpo")  # every key is the host's or the stage's
        SimPOArguments(**{f.name: config[f.name] for f in fields(SimPOArguments) if f.name in config})
        parser = HfArgumentParser([ModelArguments, DataArguments, FinetuningArguments, GeneratingArguments])
        parser.parse_dict({k: v for k, v in config.items() if k != "stage"}, allow_extra_keys=True)  # types, checks
        if "dataset_dir" not in config:  # runs for a pip user: the dataset is reachable without a data folder
            names = config["dataset"].split(",")
            check_registered(names, resolve_dataset_dir(names, "data"))
    elif "rounds" in config:
        from simpo_plugin.rounds import check_config

        check_config(config)  # the top-level keys, and each block's against its command's
    else:
        from simpo_plugin.evaluation.args import EvalArguments
        from simpo_plugin.pairs.args import PairsArguments
        from simpo_plugin.sampling.settings import check_keys

        check_keys(config, EvalArguments if "models" in config else PairsArguments)


def make_recipe(target: str) -> list[str]:
    """The commands of a Makefile target, as a user types them (`$(PY)` is the venv's python)."""
    lines = (ROOT / "Makefile").read_text(encoding="utf-8").split(f"\n{target}:", 1)[1].split("\n")[1:]
    recipe = "\n".join(itertools.takewhile(lambda line: line.startswith("\t"), lines)).replace("\\\n", " ")
    commands = [" ".join(line.split()) for line in recipe.split("\n") if not line.strip().startswith("@")]
    return [command.replace("$(PY)", "python").replace("$(DEMO_DIR)", "demo_output") for command in commands]


@pytest.mark.parametrize(("target", "doc"), [("onpolicy-demo", "onpolicy.md"), ("demo", "getting-started.md")])
def test_a_make_target_the_docs_spell_out_runs_what_they_say(target: str, doc: str) -> None:
    text = (ROOT / "docs" / doc).read_text(encoding="utf-8")
    commands = make_recipe(target)
    for command in commands:
        assert command.split(" model_name_or_path=")[0] in text, command  # the demo's overrides aside
    counted = re.findall(rf"`make {target}` runs (?:these |all )?(\w+)", text)
    numbers = {"two": 2, "three": 3, "four": 4, "five": 5, "six": 6}
    assert all(numbers.get(word) == len(commands) for word in counted), (counted, commands)


def test_getting_started_names_the_next_steps() -> None:
    text = (ROOT / "docs" / "getting-started.md").read_text(encoding="utf-8")
    section = text.split("Next steps\n", 1)[1].split("\n## ", 1)[0]
    for step in ("make onpolicy-demo", "simpo-plugin eval", "make rounds-demo"):
        assert f"`{step}" in section, step


def test_getting_started_describes_the_demo_as_configured() -> None:
    """What the page says the demo shows is what examples/demo/simpo_demo.yaml does: held-out accuracy measured
    before the first step (so "about chance at the start" is a reading, not a guess), its cadence, the probes'."""
    text = " ".join((ROOT / "docs" / "getting-started.md").read_text(encoding="utf-8").split())
    config = yaml.safe_load((ROOT / "examples" / "demo" / "simpo_demo.yaml").read_text(encoding="utf-8"))
    assert "0.5 to 1.0" not in text
    assert "measured before the first step" in text and config["eval_on_start"] is True
    every, steps = map(int, re.search(r"every (\d+) of the (\d+) steps", text).groups())
    assert every == config["eval_steps"] and steps == 64
    prompts, probe_steps = map(int, re.search(r"probes answer (\d+) prompts every (\d+) steps", text).groups())
    assert (prompts, probe_steps) == (16, config["simpo_probe_steps"])
