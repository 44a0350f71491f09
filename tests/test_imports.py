"""The package's structure: imports run one way (no cycle), and light modules stay light."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "lobsearch"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """Every lobsearch module ``path`` imports, at module level or inside a function (a lazy
    import is still an arrow between two modules), resolved to a module of the package."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


def import_graph() -> dict[str, set[str]]:
    """{module: the package's modules it imports} (a package is its ``__init__``)."""
    paths = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    modules = set(paths)
    return {name: {m for m in _imports(path, modules) if m != name} for name, path in paths.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return stack[stack.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_planted_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycle_in_the_package():
    graph = import_graph()
    assert {"lobsearch.search", "lobsearch.tuner", "lobsearch.recipe"} <= set(graph)
    assert "lobsearch.plan" in graph["lobsearch.tuner"], "the walk must see real imports"
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_driver_is_layered_top_down():
    """tune -> search -> tuner / results / tracking / report -> trial -> recipe: nothing below the
    driver imports it, and the recipe never imports a command-line module."""
    graph = import_graph()
    drivers = {"lobsearch.tune", "lobsearch.search"}
    for module, targets in graph.items():
        if module not in drivers:
            assert not targets & drivers, f"{module} imports the driver: {sorted(targets & drivers)}"
    for module in ("lobsearch.recipe", "lobsearch.trial", "lobsearch.gpu", "lobsearch.results", "lobsearch.loop"):
        assert "lobsearch.train" not in graph[module], f"{module} imports the train command"


def _loads_torch(code: str) -> bool:
    probe = f"import sys\n{code}\nprint('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    return out.stdout.strip().splitlines()[-1] == "True"


@pytest.mark.integration
def test_the_command_line_help_and_the_plan_do_not_load_torch():
    assert not _loads_torch("import lobsearch.plan, lobsearch.console, lobsearch.files")
    help_text = "import contextlib, io\nfrom lobsearch.tune import main\n" \
                "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n    main(['--help'])"
    assert not _loads_torch(help_text)
    assert _loads_torch("import lobsearch.recipe"), "the probe must see torch where it is loaded"


@pytest.mark.integration
def test_the_replay_trial_does_not_load_torch():
    """What a replayed trial's process imports: the replay module, with Ray Tune's reporting."""
    assert not _loads_torch("import lobsearch.replay\nfrom ray import tune\nfrom lobsearch.replay import replay_trial")


def test_provenance_names_the_code_and_the_libraries():
    from lobsearch import __version__
    from lobsearch.provenance import KEYS, trial_provenance

    record = trial_provenance(device="cpu", data_hash="abc", seed=3)
    assert tuple(record) == KEYS and record["lobsearch_version"] == __version__
    assert record["torch_version"].startswith("2.13") and record["seed"] == "3"
    assert len(record["lobsearch_commit"].split("+")[0]) in (40, len("unknown"))
