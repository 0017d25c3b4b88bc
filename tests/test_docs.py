"""The README stays true: every HSRModifier field with its default, and the two front-door
commands."""

from pathlib import Path

from llmcompressor.modifiers import Modifier

from hsr_plugin import HSRModifier

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_every_field_is_documented_with_its_default():
    for name, field in HSRModifier.model_fields.items():
        if name in Modifier.model_fields:
            continue
        default = field.get_default(call_default_factory=True)
        row = f"| `{name}` | `{default!r}` |".replace("\\\\", "\\")
        assert row in README, f"README lacks the row for {name}: {row}"


def test_readme_starts_with_the_two_commands():
    first_block = README.split("```bash", 1)[1].split("```", 1)[0]
    assert "make demo" in first_block and "make test" in first_block


def test_ci_runs_the_readme_test_command():
    ci = (Path(__file__).resolve().parents[1] / ".ci" / "run").read_text()
    assert "make test" in ci
