"""`hsr report`: summarise an HSR report (and a comparison) as markdown and plots."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from loguru import logger

__all__ = ["add_parser", "read_json", "read_report", "report"]


def add_parser(sub, parents: list[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "report", parents=parents, help="summarise an HSR report and draw its plots"
    )
    parser.add_argument("report", help="hsr_report.json written by HSRModifier")
    parser.add_argument(
        "--comparison",
        help="comparison.json written by hsr-compare (integration/hsr_eval/compare.py)",
    )
    parser.add_argument(
        "--out", help="folder for PNGs and summary.md (default: next to the report)"
    )
    parser.set_defaults(func=report)


def report(args: argparse.Namespace) -> Path:
    """Write head_scores.png (and safety_bars.png with a comparison) and summary.md."""
    from hsr_plugin.extras import require_plots

    require_plots("hsr report")
    from hsr_eval.files import write_text_atomic
    from hsr_plugin.plots import plot_head_scores, plot_safety_bars, summary_markdown

    report_path = Path(args.report)
    data = read_report(report_path)
    comparison = read_json(Path(args.comparison), "comparison") if args.comparison else None
    if comparison is not None and not isinstance(comparison.get("models"), dict):
        raise SystemExit(f"error: {args.comparison}: a comparison has a 'models' mapping")
    out = Path(args.out) if args.out else report_path.parent
    out.mkdir(parents=True, exist_ok=True)
    written = [plot_head_scores(data, out / "head_scores.png")]
    if comparison is not None:
        written.append(plot_safety_bars(comparison, out / "safety_bars.png"))
    text = summary_markdown(data, comparison)
    write_text_atomic(out / "summary.md", text)
    written.append(out / "summary.md")
    print(text)
    for path in written:
        logger.info(f"wrote {path}")
    return out


def read_json(path: Path, what: str) -> dict:
    """A JSON object from `path`, or a one-line error naming `what` it should have been."""
    if not path.is_file():
        raise SystemExit(f"error: {what} {path} does not exist")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise SystemExit(f"error: {path}: not a valid JSON {what} ({err})") from None
    if not isinstance(data, dict):
        raise SystemExit(f"error: {path}: a {what} is a JSON object, found {type(data).__name__}")
    return data


def read_report(path: Path) -> dict:
    """An HSR report of the supported schema version, with the fields the summary reads."""
    from hsr_plugin.report import SCHEMA_VERSION

    data = read_json(path, "report")
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise SystemExit(
            f"error: {path}: schema_version {version!r} is not supported (this hsr reads "
            f"version {SCHEMA_VERSION})"
        )
    heads = data.get("heads")
    fields = (("layer", int), ("head", int), ("score", (int, float)))
    if not isinstance(heads, list) or not all(
        isinstance(h, dict) and all(isinstance(h.get(k), t) for k, t in fields) for h in heads
    ):
        raise SystemExit(f"error: {path}: 'heads' must list {{layer, head, score}} objects")
    for key in ("totals", "config"):
        if not isinstance(data.get(key), dict):
            raise SystemExit(f"error: {path}: '{key}' must be a JSON object")
    if not isinstance(data.get("restored"), list) or not isinstance(
        data.get("selected_heads"), list
    ):
        raise SystemExit(f"error: {path}: 'restored' and 'selected_heads' must be lists")
    return data
