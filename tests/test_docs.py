"""The docs stay true: every HSRModifier field with its default (integration/docs/fields.md),
the two front-door commands first in the README, and a README short enough to be a front door."""

from pathlib import Path

from llmcompressor.modifiers import Modifier

from hsr_plugin import HSRModifier

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
FIELDS = (REPO / "integration" / "docs" / "fields.md").read_text()


def test_every_field_is_documented_with_its_default():
    for name, field in HSRModifier.model_fields.items():
        if name in Modifier.model_fields:
            continue
        default = field.get_default(call_default_factory=True)
        row = f"| `{name}` | `{default!r}` |".replace("\\\\", "\\")
        assert row in FIELDS, f"integration/docs/fields.md lacks the row for {name}: {row}"


def test_readme_starts_with_the_two_commands():
    first_block = README.split("```bash", 1)[1].split("```", 1)[0]
    assert "make demo" in first_block and "make test" in first_block


def test_ci_runs_the_readme_test_command():
    ci = (Path(__file__).resolve().parents[1] / ".ci" / "run").read_text()
    assert "make test" in ci


def test_the_readme_is_a_front_door_and_its_links_resolve():
    import re

    assert len(README.splitlines()) < 200
    for target in re.findall(r"\]\(([^)#]+)\)", README):
        if "://" not in target:
            assert (REPO / target).exists(), f"README links to {target}, which does not exist"
    docs = REPO / "integration" / "docs"
    for page in docs.glob("*.md"):
        for target in re.findall(r"\]\(([^)#]+)\)", page.read_text()):
            if "://" not in target:
                assert (page.parent / target).exists(), f"{page.name} links to {target}"
