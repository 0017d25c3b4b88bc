"""hsr_plugin (the package): importing it registers HSRModifier with llm-compressor's public
ModifierFactory.register, in any order and without an import hook; without llm-compressor it
still imports and names what HSRModifier needs; no module imports one that imports it back."""

from __future__ import annotations

import subprocess
import sys

import pytest

CREATE = (
    "from llmcompressor.modifiers.factory import ModifierFactory\n"
    "made = ModifierFactory.create('HSRModifier', allow_registered=True, "
    "allow_experimental=False)\n"
)


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)


@pytest.mark.parametrize(
    "code",
    [
        "import hsr_plugin, llmcompressor",
        "import llmcompressor, hsr_plugin",
        "import hsr_plugin; from llmcompressor.modifiers.factory import ModifierFactory",
        "from hsr_plugin.ablation import ablate_head; import hsr_plugin.decoder_stack\n"
        "import llmcompressor",
        "import hsr_plugin.neuron_scoring, hsr_plugin.exact_head_scores, hsr_plugin.restore\n"
        "import llmcompressor",
        # modules that import llm-compressor themselves
        "from hsr_plugin.settings import HSRSettings",
        "from hsr_plugin.recipe_checks import earlier_pruning",
        "from hsr_plugin.restoration_policies import RestorationPolicy",
    ],
    ids=[
        "plugin-first",
        "llmcompressor-first",
        "submodule-first",
        "ablation-first",
        "scoring-first",
        "settings-first",
        "recipe-checks-first",
        "policies-first",
    ],
)
@pytest.mark.subprocess
def test_import_hsr_plugin_registers_hsrmodifier_in_any_order(code):
    check = (
        f"{code}\n{CREATE}from hsr_plugin.modifier import HSRModifier\n"
        "assert type(made) is HSRModifier\n"
        "import sys\n"
        "hooks = [f for f in sys.meta_path if type(f).__module__.startswith('hsr_plugin')]\n"
        "assert not hooks, hooks\n"
        "print('registered')"
    )
    proc = _python(check)
    assert proc.returncode == 0 and "registered" in proc.stdout, proc.stderr[-2000:]


@pytest.mark.subprocess
def test_a_recipe_read_before_import_hsr_plugin_does_not_find_the_modifier():
    """The one order that fails, written down: llm-compressor cannot know HSRModifier before
    `import hsr_plugin` runs in that process (it loads no plugin entry points)."""
    proc = _python(f"{CREATE}print('found')")
    assert proc.returncode != 0 and "No modifier of type 'HSRModifier' found" in proc.stderr
    assert _python(f"import hsr_plugin\n{CREATE}print('found')").stdout.splitlines()[-1] == "found"


@pytest.mark.subprocess
def test_without_llmcompressor_the_package_imports_and_names_what_hsrmodifier_needs():
    code = (
        "import sys\nsys.modules['llmcompressor'] = None  # as if not installed\n"
        "import hsr_plugin\nassert hsr_plugin.__version__\n"
        "try:\n    hsr_plugin.HSRModifier\nexcept ImportError as err:\n    print(err)\n"
        "try:\n    hsr_plugin.Nope\nexcept AttributeError as err:\n    print(err)\n"
    )
    proc = _python(code)
    # the pin comes from the installed metadata, whose one source is pyproject.toml
    assert proc.stdout.splitlines() == [
        "HSRModifier needs llm-compressor: pip install 'llmcompressor==0.14.0.1'",
        "module 'hsr_plugin' has no attribute 'Nope'",
    ], proc.stderr[-2000:]


def _imports_of_the_package() -> dict[str, set[str]]:
    """{module: the modules of hsr_plugin it imports}, read from the source (every import
    statement, deferred ones inside functions too)."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    modules = {}
    for path in (root / "hsr_plugin").rglob("*.py"):
        parts = path.relative_to(root).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    edges: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names if alias.name in modules}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                for alias in node.names:
                    target = f"{base}.{alias.name}"
                    found.add(target if target in modules else base)
        edges[name] = {m for m in found if m in modules and m != name}
    return edges


def test_no_module_of_the_package_imports_one_that_imports_it_back():
    edges = _imports_of_the_package()
    assert "hsr_plugin.cli.options" in edges and edges["hsr_plugin.cli.options"] == set()

    def reaches(start: str, goal: str) -> bool:
        seen, todo = set(), [start]
        while todo:
            for nxt in edges[todo.pop()] - seen:
                if nxt == goal:
                    return True
                seen.add(nxt)
                todo.append(nxt)
        return False

    cycles = sorted(f"{a} -> {b}" for a in edges for b in edges[a] if reaches(b, a))
    assert cycles == []
