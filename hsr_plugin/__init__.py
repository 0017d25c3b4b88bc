"""hsr-plugin: Hierarchical Safety Realignment (HSR) for pruned models, an llm-compressor modifier.

    import hsr_plugin  # registers HSRModifier with llm-compressor's ModifierFactory
    from llmcompressor import oneshot
    oneshot(model=..., recipe="recipes/wanda_hsr.yaml", dataset=..., output_dir=...)

Importing the package is cheap: llm-compressor (about 9 s to import, and it logs device warnings)
is not imported here. HSRModifier is registered the moment llm-compressor is imported, before
any recipe can name it: at once when it already is, otherwise by a one-shot import hook. So
`hsr --help` stays fast, and the serving virtualenv, which has no llm-compressor, imports the
dependency-free helpers (`hsr_eval.common`, `hsr_eval.tables`) without it.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys

__all__ = ["HSRModifier", "__version__"]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "HSRModifier":
        if importlib.util.find_spec("llmcompressor") is None:
            raise ImportError(
                f"HSRModifier needs llm-compressor: pip install {_llmcompressor_pin()}"
            )
        from hsr_plugin.modifier import HSRModifier

        return HSRModifier
    raise AttributeError(f"module 'hsr_plugin' has no attribute {name!r}")


def _llmcompressor_pin() -> str:
    """The pin of the installed distribution's metadata (pyproject.toml is its one place)."""
    from importlib import metadata

    try:
        requires = metadata.requires("hsr-plugin") or []
    except metadata.PackageNotFoundError:
        return "hsr-plugin"
    pins = [r for r in requires if r.startswith("llmcompressor")]
    return f"'{pins[0]}'" if pins else "llmcompressor"


def _initializing(name: str) -> bool:
    spec = getattr(sys.modules.get(name), "__spec__", None)
    return bool(getattr(spec, "_initializing", False))


def register_when_ready(just_run: str | None = None) -> bool:
    """Import `hsr_plugin.modifier` (it registers HSRModifier at its end) once llm-compressor
    is loaded, unless a module of this package is half-imported: a module that imports
    llm-compressor first (`hsr_plugin.settings`, say) would be imported again, half-made, by
    the modifier. `just_run` names a module whose code has just run (the import machinery
    still marks it as initializing). Returns whether the modifier is imported or being
    imported."""

    def initializing(name: str) -> bool:
        return name != just_run and _initializing(name)

    if "hsr_plugin.modifier" in sys.modules:
        return True
    if "llmcompressor" not in sys.modules or initializing("llmcompressor"):
        return False
    if any(name.startswith("hsr_plugin.") and initializing(name) for name in list(sys.modules)):
        return False
    import hsr_plugin.modifier  # noqa: F401

    return True


class RegisterWhenLlmCompressorLoads(importlib.abc.MetaPathFinder):
    """Runs `register_when_ready` after the import of `llmcompressor` and after that of each
    module of this package, so HSRModifier is registered as soon as both allow it; then steps
    aside."""

    def __init__(self) -> None:
        self._finding: set[str] = set()

    def find_spec(self, fullname, path, target=None):
        watched = fullname == "llmcompressor" or fullname.startswith("hsr_plugin.")
        if not watched or fullname in self._finding:
            return None
        self._finding.add(fullname)
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            self._finding.discard(fullname)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        run_module = spec.loader.exec_module

        def exec_module(module):
            run_module(module)
            if register_when_ready(just_run=fullname) and self in sys.meta_path:
                sys.meta_path.remove(self)

        spec.loader.exec_module = exec_module
        return spec


if not register_when_ready() and importlib.util.find_spec("llmcompressor") is not None:
    sys.meta_path.insert(0, RegisterWhenLlmCompressorLoads())
