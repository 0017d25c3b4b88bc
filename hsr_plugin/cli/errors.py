"""What `hsr` prints when a run fails: one line for what the user can fix, a traceback for a bug."""

from __future__ import annotations

import sys
import traceback

__all__ = ["BUG_LINE", "OOM_ADVICE", "one_line", "report_failure", "user_errors"]

OOM_ADVICE = (
    "out of memory: lower HSRModifier.batch_size or attribution_memory_gb, or set "
    "offload_statistics: true (--set HSRModifier.batch_size=1); hsr --debug shows where"
)
BUG_LINE = (
    "hsr: this is a bug in hsr-plugin or a library below it, not a problem with your input; "
    "please report it with the traceback above"
)


def user_errors() -> tuple[type[BaseException], ...]:
    """What the user can fix: HSR's own errors, invalid modifier fields, an output another run
    is writing, and a judge that cannot be reached or is set up wrong (for `hsr sweep`)."""
    from pydantic import ValidationError

    from hsr_eval.files import OutputBusyError
    from hsr_eval.tasks.judge_adapters import JudgeError
    from hsr_plugin.errors import HSRUserError

    return (HSRUserError, ValidationError, OutputBusyError, JudgeError)


def one_line(err: BaseException) -> str:
    """The error as one line: each invalid field of a pydantic error, or the message's first
    lines joined (at most three)."""
    from pydantic import ValidationError

    if isinstance(err, ValidationError):
        problems = "; ".join(
            f"{'.'.join(str(x) for x in e['loc']) or e.get('type')}: {e['msg']}"
            for e in err.errors()
        )
        return f"{err.title}: {problems}"
    text = str(err).strip() or type(err).__name__
    return (
        text.splitlines()[0] if len(text.splitlines()) == 1 else " | ".join(text.splitlines()[:3])
    )


def report_failure(err: BaseException, debug: bool) -> int:
    """Print what `err` means for the user and return the exit code; re-raise it under --debug.

    `SystemExit("error: ...")` (a check before any work) and a user error give one line and 2;
    out of memory one line of advice and 3; anything else its traceback, `BUG_LINE` and 1.
    """
    import torch

    if isinstance(err, SystemExit):
        if debug or not isinstance(err.code, str):
            raise err
        print(err.code if err.code.startswith("error:") else f"error: {err.code}", file=sys.stderr)
        return 2
    if isinstance(err, user_errors()):
        if debug:
            raise err
        print(f"error: {one_line(err)}", file=sys.stderr)
        return 2
    if isinstance(err, torch.OutOfMemoryError):
        if debug:
            raise err
        print(f"error: {OOM_ADVICE}", file=sys.stderr)
        return 3
    traceback.print_exception(err)
    print(BUG_LINE, file=sys.stderr)
    return 1
