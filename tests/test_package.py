"""hsr_plugin (the package): importing it in any order registers HSRModifier, and it names what
HSRModifier needs when llm-compressor is missing."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize(
    "code",
    [
        "import hsr_plugin, llmcompressor",  # the plugin first: registered by the import hook
        "import llmcompressor, hsr_plugin",  # llm-compressor first: registered at once
        "import hsr_plugin; from llmcompressor.modifiers.factory import ModifierFactory",
        "from hsr_plugin.ablation import ablate_head; from hsr_plugin.hooks import hooks_mixin\n"
        "hooks_mixin()",
        "import hsr_plugin.neuron_scoring, hsr_plugin.attribution, hsr_plugin.restore\n"
        "import llmcompressor",
        # modules that import llm-compressor themselves, before the modifier exists
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
        f"{code}\nfrom llmcompressor.modifiers.factory import ModifierFactory\n"
        "from hsr_plugin.modifier import HSRModifier\n"
        "made = ModifierFactory.create('HSRModifier', allow_registered=True, "
        "allow_experimental=False)\n"
        "assert type(made) is HSRModifier\n"
        "print('registered')"
    )
    proc = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True)
    assert proc.returncode == 0 and "registered" in proc.stdout, proc.stderr[-2000:]


def test_the_import_hook_steps_aside_when_llmcompressor_is_absent(monkeypatch):
    import importlib.util

    import hsr_plugin

    finder = hsr_plugin.RegisterWhenLlmCompressorLoads()
    assert finder.find_spec("numpy", None) is None  # not watched
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert finder.find_spec("llmcompressor", None) is None
    assert finder.find_spec("hsr_plugin.missing", None) is None


def test_the_package_names_what_hsrmodifier_needs(monkeypatch):
    import importlib.util

    import hsr_plugin

    with pytest.raises(AttributeError) as err:
        hsr_plugin.__getattr__("Nope")
    assert str(err.value) == "module 'hsr_plugin' has no attribute 'Nope'"
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "llmcompressor" else real(n, *a)
    )
    with pytest.raises(ImportError) as err:
        hsr_plugin.__getattr__("HSRModifier")
    # the pin comes from the installed metadata, whose one source is pyproject.toml
    assert (
        str(err.value) == "HSRModifier needs llm-compressor: pip install 'llmcompressor==0.14.0.1'"
    )


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
