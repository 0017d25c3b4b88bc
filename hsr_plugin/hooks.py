"""llm-compressor's HooksMixin, imported when HSR first registers a hook.

Only hsr_plugin/modifier.py imports llm-compressor when it is imported: the package registers
HSRModifier from an import hook the moment llm-compressor loads (hsr_plugin/__init__.py), and a
module that llm-compressor's import can reach back into must not be half-imported then.
"""

from __future__ import annotations

__all__ = ["hooks_mixin"]


def hooks_mixin() -> type:
    from llmcompressor.modifiers.utils.hooks import HooksMixin

    return HooksMixin
