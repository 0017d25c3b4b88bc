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


def _import_modifier() -> None:
    # hsr_plugin.modifier registers HSRModifier when it runs; if it is running already (it
    # imported llm-compressor itself), it registers at its own end.
    if "hsr_plugin.modifier" not in sys.modules:
        import hsr_plugin.modifier  # noqa: F401


class _RegisterWhenLlmCompressorLoads(importlib.abc.MetaPathFinder):
    """Finds `llmcompressor` once, and runs the registration right after its import."""

    def find_spec(self, fullname, path, target=None):
        if fullname != "llmcompressor":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        run_module = spec.loader.exec_module

        def exec_module(module):
            run_module(module)
            _import_modifier()

        spec.loader.exec_module = exec_module
        return spec


if "llmcompressor" in sys.modules:
    _import_modifier()
elif importlib.util.find_spec("llmcompressor") is not None:
    sys.meta_path.insert(0, _RegisterWhenLlmCompressorLoads())
