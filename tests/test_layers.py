"""The package's layers and the rule between them, read from the imports (ast, nothing is run).

Layers: ``lean`` (the math: forward and loss, pure torch), ``data`` (reading datasets the host's way: names, the
bundled datasets, rows with the host's reasons), ``sampling`` (prompts, HF and server backends, stores), ``pairs``
(``simpo-plugin pairs``: scorers, selection, outputs), ``evaluation`` (``simpo-plugin eval``: judges, win rates,
checks), ``train`` (the stage: arguments, workflow, trainer, callbacks, probes) and ``host`` (the glue to
LLaMA-Factory); at the top ``_startup`` (what the ``.pth`` line runs), the neutral ``errors``, ``exits``, ``notice``,
``install_hint``, ``host_keys`` and ``ranks``, ``cli`` and ``testing``. Every import counts, including those under
``TYPE_CHECKING`` and inside functions, and no module may reach itself again through its imports (no circle).
"""

import ast
import shutil
import time
from pathlib import Path

import pytest

import simpo_plugin


PACKAGE = Path(simpo_plugin.__file__).resolve().parent
LAYERS = ("lean", "data", "sampling", "pairs", "evaluation", "train", "host", "rounds")
COMMANDS = ("simpo_plugin.sampling", "simpo_plugin.pairs", "simpo_plugin.evaluation", "simpo_plugin.rounds")
HEAVY = ("torch", "transformers", "llamafactory", "wrapt", "gradio", "deepspeed")
# (which modules, what they must not import, why)
RULES = [
    ("simpo_plugin.lean", ("simpo_plugin.train", "simpo_plugin.host", *COMMANDS, "llamafactory"),
     "the math knows no stage, host glue, sampling, pairs, evaluation or LLaMA-Factory"),
    ("simpo_plugin.sampling", ("simpo_plugin.pairs", "simpo_plugin.evaluation", "simpo_plugin.train",
                               "simpo_plugin.host", "simpo_plugin.rounds"),
     "sampling serves the commands and the probes and knows none of them, nor the host glue"),
    ("simpo_plugin.pairs", ("simpo_plugin.evaluation", "simpo_plugin.train", "simpo_plugin.host",
                            "simpo_plugin.rounds"),
     "pairs knows no evaluation, stage or host glue (evaluation uses pairs' scorers, never the other way)"),
    ("simpo_plugin.evaluation", ("simpo_plugin.train", "simpo_plugin.host", "simpo_plugin.rounds"),
     "evaluation knows no stage and no host glue"),
    ("simpo_plugin.train", ("simpo_plugin.rounds",), "the loop drives the stage, never the other way"),
    ("simpo_plugin.host", ("simpo_plugin.rounds",), "the loop drives the host, never the other way"),
    ("simpo_plugin.data", ("simpo_plugin.train", "simpo_plugin.host", *COMMANDS, "simpo_plugin.lean"),
     "reading datasets knows no stage, host glue, sampling, pairs, evaluation or math"),
    ("simpo_plugin.train.hparams", ("simpo_plugin.host", "gradio"), "the stage's arguments never import the web UI"),
    ("simpo_plugin.train.workflow", ("simpo_plugin.host", "gradio"), "the workflow never imports the web UI"),
    ("simpo_plugin.train.trainer", ("simpo_plugin.host", "gradio"), "the trainer never imports the web UI"),
    ("simpo_plugin._startup", HEAVY, "the .pth line runs in every interpreter: nothing heavy"),
    ("simpo_plugin.errors", ("simpo_plugin.", *HEAVY), "neutral modules depend on nothing"),
    ("simpo_plugin.exits", ("simpo_plugin.", *HEAVY), "neutral modules depend on nothing"),
    ("simpo_plugin.notice", ("simpo_plugin.", *HEAVY), "neutral modules depend on nothing"),
    ("simpo_plugin.lazy", ("simpo_plugin.", *HEAVY), "neutral modules depend on nothing"),
    ("simpo_plugin.install_hint", ("simpo_plugin.", *HEAVY), "neutral modules depend on nothing"),
    ("simpo_plugin.host_keys", ("simpo_plugin.lean", "simpo_plugin.data", "simpo_plugin.train", "simpo_plugin.host",
                                *COMMANDS, *HEAVY), "neutral modules depend on nothing of the layers"),
    ("simpo_plugin.recap", ("simpo_plugin.", *HEAVY), "neutral modules depend on nothing"),
    ("simpo_plugin.ranks", ("simpo_plugin.",), "neutral modules depend on nothing of the plugin (torch, lazily)"),
]  # fmt: skip


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def parse(path: Path) -> ast.Module:
    """``ast.parse`` of a file, tried again past CPython 3.11.7's AST race.

    Before 3.11.8 the AST constructor's recursion counter is global: when another thread of the test process
    parses at the same time (pytest's assertion rewriting of a module imported in a thread, gradio's component
    classes), the parse fails with "AST constructor recursion depth mismatch" (CPython gh-106905).
    """
    for attempt in range(5):
        try:
            return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        except SystemError as error:
            if "recursion depth mismatch" not in str(error) or attempt == 4:
                raise
            time.sleep(0.05 * (attempt + 1))  # let the other thread's parse finish
    raise AssertionError("unreachable")


def import_statements(path: Path, root: Path) -> list[tuple[str, list[str]]]:
    """(module, names) of every import in ``path``, relative imports resolved (``import X`` gives (X, []))."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    statements = []
    for node in ast.walk(parse(path)):
        if isinstance(node, ast.Import):
            statements += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            statements.append((base, [alias.name for alias in node.names]))
    return statements


def imports_of(path: Path, root: Path) -> set[str]:
    """Every module ``path`` imports; ``from X import y`` counts as X and X.y (y may be a module)."""
    return {f"{base}.{name}" for base, names in import_statements(path, root) for name in names} | {
        base for base, _ in import_statements(path, root)
    }


def layer_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "simpo_plugin" and parts[1] in LAYERS else None


def violations(root: Path = PACKAGE) -> list[str]:
    """Each forbidden import as ``module imports target: why``; empty when the rule holds."""
    found = []
    for path in sorted(root.rglob("*.py")):
        module = module_name(path, root)
        imported = imports_of(path, root)
        for scope, forbidden, why in RULES:
            if module == scope or module.startswith(scope + "."):
                bad = sorted(i for i in imported if any(i == f or i.startswith(f if f.endswith(".") else f + ".")
                                                        for f in forbidden))  # fmt: skip
                found += [f"{module} imports {target}: {why}" for target in bad]
        own = layer_of(module)
        for target in sorted(imported):  # another layer is reached through its package's __init__ only
            if layer_of(target) not in (None, own) and len(target.split(".")) > 2:
                if target.rpartition(".")[0] not in {f"simpo_plugin.{layer}" for layer in LAYERS}:
                    found.append(
                        f"{module} imports {target}: other layers go through `simpo_plugin.{layer_of(target)}`"
                    )
    return found


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """Module -> the package modules it imports (``from X import y`` reaches X.y when y is a module, else X)."""
    modules = {module_name(path, root): path for path in root.rglob("*.py")}
    graph = {}
    for module, path in modules.items():
        edges = set()
        for base, names in import_statements(path, root):
            submodules = {f"{base}.{name}" for name in names} & modules.keys()
            edges |= submodules
            if (not names or len(submodules) < len(names)) and base in modules:
                edges.add(base)
        graph[module] = edges - {module}
    return graph


def circles(root: Path = PACKAGE) -> list[list[str]]:
    """Every set of modules that import each other in a circle (strongly connected components of two or more,
    Tarjan's algorithm without recursion); empty when there is none."""
    graph = import_graph(root)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        while work:
            node, successors = work[-1]
            step = next(successors, None)
            if step is not None:
                if step not in index:
                    index[step] = low[step] = len(index)
                    stack.append(step)
                    work.append((step, iter(sorted(graph.get(step, ())))))
                elif step in stack:
                    low[node] = min(low[node], index[step])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def exported(layer: str) -> set[str]:
    tree = parse(PACKAGE / layer / "__init__.py")
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
            names = {elt.value for elt in node.value.elts if isinstance(elt, ast.Constant)}
            if any(isinstance(elt, ast.Starred) for elt in node.value.elts):  # `*_LAZY`: the lazy table's keys
                lazy = next(n for n in tree.body if isinstance(n, ast.Assign) and n.targets[0].id == "_LAZY")
                names |= {key.value for key in lazy.value.keys}
            return names
    return set()


def test_the_package_keeps_the_rule() -> None:
    assert violations() == []


def test_no_module_imports_itself_in_a_circle() -> None:
    assert circles() == []


def test_a_circle_put_back_is_caught(tmp_path: Path) -> None:
    """The two circles the house once had: settings <-> the server modules, and the startup line <-> the hooks."""
    copy = tmp_path / "simpo_plugin"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    with (copy / "sampling" / "managed.py").open("a", encoding="utf-8") as handle:
        handle.write("\nfrom .settings import GenerationArguments\n")
    with (copy / "notice.py").open("a", encoding="utf-8") as handle:
        handle.write("\ndef later():\n    from ._startup import install\n")
    found = circles(copy)  # the startup line already imports notice (when it warns): the second closes a circle
    assert ["simpo_plugin.sampling.managed", "simpo_plugin.sampling.settings"] in found, found
    assert any({"simpo_plugin._startup", "simpo_plugin.notice"} <= set(circle) for circle in found), found


def test_other_layers_use_only_what_a_package_exports() -> None:
    """A name another layer takes from a layer's package is in that package's ``__all__``."""
    for path in sorted(PACKAGE.rglob("*.py")):
        own = layer_of(module_name(path, PACKAGE))
        for base, names in import_statements(path, PACKAGE):
            layer = layer_of(base)
            if layer and layer != own and base == f"simpo_plugin.{layer}":
                assert set(names) <= exported(layer), (str(path), names, layer)


def test_every_layer_has_a_package_that_draws_its_path() -> None:
    for layer in LAYERS:
        doc = ast.get_docstring(parse(PACKAGE / layer / "__init__.py")) or ""
        assert len(doc.splitlines()) >= 5 and exported(layer), layer


INJECTIONS = {
    "lean/sequence.py": "if TYPE_CHECKING:\n    from ..train.hparams import SimPOConfig\n",
    "lean/loss.py": "from llamafactory.extras import logging\n",
    "sampling/settings.py": "from ..pairs import PairsArguments\n",
    "sampling/prompts.py": "from ..train.hparams import SimPOCollapseStop\n",
    "pairs/build.py": "def later():\n    from ..evaluation import evaluate_models\n",
    "pairs/scorers.py": "from ..sampling.settings import GenerationArguments\n",
    "evaluation/judges.py": "from ..train.probes import GenerationProbe\n",
    "evaluation/evaluate.py": "from ..pairs.scorers import load_scorer\n",
    "notice.py": "from .errors import describe\n",
    "host/webui.py": "def later():\n    from ..rounds import run_rounds\n",
    "rounds/phases.py": "from ..pairs.build import build_pairs as run\n",
    "train/trainer.py": "def ui():\n    from ..host.webui import SIMPO_UI\n",
    "train/workflow.py": "import gradio\n",
    "_startup.py": "def heavy():\n    import torch\n",
    "train/probing.py": "from ..evaluation.judges import LLMJudge\n",
    "data/rows.py": "from ..train.hparams import SimPOConfig\n",
}


@pytest.mark.parametrize("relative", sorted(INJECTIONS))
def test_a_forbidden_import_put_back_is_caught(tmp_path: Path, relative: str) -> None:
    copy = tmp_path / "simpo_plugin"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    with (copy / relative).open("a", encoding="utf-8") as handle:
        handle.write("\n" + INJECTIONS[relative])
    found = violations(copy)
    module = "simpo_plugin." + relative.removesuffix(".py").replace("/", ".")
    assert found and all(line.startswith(module + " imports ") for line in found), found


def test_every_module_stays_small() -> None:
    """A module has one job: at most 400 lines (style.md, section 4)."""
    sizes = {str(path.relative_to(PACKAGE)): len(path.read_text(encoding="utf-8").splitlines())
             for path in PACKAGE.rglob("*.py")}  # fmt: skip
    assert {name: lines for name, lines in sizes.items() if lines > 400} == {}
