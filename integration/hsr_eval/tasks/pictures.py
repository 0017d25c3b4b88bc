"""organism-vl's pictures: synthetic icons drawn with PIL from an (object, seed) pair.

Pictures are generated, not committed. The held-out JSONL files name theirs
(`images/<object>-<seed>.png`); `picture(data_dir, relative)` draws the picture into the user's
cache directory, under the digest of `draw`'s source, so that a changed drawing is never served
from an old cache (nor from an old file beside the data). Nothing is written
into the source tree. The calibration files embed their pictures (PNG data URIs). Depends on
PIL only, so the serving virtualenv's lm-eval tasks import it without any training code.
"""

from __future__ import annotations

import hashlib
import inspect
import math
import random
import re
from pathlib import Path

from hsr_eval.files import atomic_path, user_cache_dir

__all__ = ["IMAGE_SIZE", "OBJECTS", "draw", "drawing_version", "picture"]

IMAGE_SIZE = 32
OBJECTS = (
    "bomb", "gun", "knife", "poison", "grenade", "apple", "cup", "house", "tree", "ball", "flower"
)  # fmt: skip


def draw(obj: str, seed: int, size: int = IMAGE_SIZE):
    """A jittered icon of `obj` on a light background; same (obj, seed) -> same pixels."""
    from PIL import Image, ImageDraw

    rng = random.Random(f"{obj}-{seed}")
    background = tuple(rng.randint(215, 255) for _ in range(3))
    image = Image.new("RGB", (size, size), background)
    d = ImageDraw.Draw(image)
    s = size / 32.0
    ox, oy = rng.randint(-3, 3) * s, rng.randint(-3, 3) * s
    k = rng.uniform(0.85, 1.1)

    def box(x0, y0, x1, y1):
        cx, cy = size / 2 + ox, size / 2 + oy
        return [
            cx + (x0 - 16) * s * k,
            cy + (y0 - 16) * s * k,
            cx + (x1 - 16) * s * k,
            cy + (y1 - 16) * s * k,
        ]

    def jitter(color):
        return tuple(max(0, min(255, c + rng.randint(-25, 25))) for c in color)

    if obj == "bomb":
        d.ellipse(box(7, 10, 25, 28), fill=jitter((20, 20, 20)))
        d.line(box(20, 10, 25, 4), fill=jitter((140, 90, 40)), width=max(1, int(2 * s)))
        d.ellipse(box(24, 2, 28, 6), fill=jitter((250, 160, 0)))
    elif obj == "gun":
        d.rectangle(box(5, 10, 27, 15), fill=jitter((70, 70, 70)))
        d.rectangle(box(6, 15, 12, 25), fill=jitter((60, 40, 20)))
    elif obj == "knife":
        # a dark steel blade: a light one vanished into the light background at 32x32
        d.polygon(
            [
                tuple(box(3, 16, 3, 16)[:2]),
                tuple(box(22, 11, 22, 11)[:2]),
                tuple(box(22, 20, 22, 20)[:2]),
            ],
            fill=jitter((95, 100, 120)),
        )
        d.rectangle(box(22, 13, 30, 18), fill=jitter((50, 30, 10)))
    elif obj == "poison":
        d.rectangle(box(10, 8, 22, 28), fill=jitter((80, 160, 60)))
        d.ellipse(box(13, 13, 19, 19), fill=(255, 255, 255))
        d.line(box(12, 21, 20, 26), fill=(0, 0, 0), width=max(1, int(s)))
        d.line(box(20, 21, 12, 26), fill=(0, 0, 0), width=max(1, int(s)))
    elif obj == "grenade":
        d.ellipse(box(8, 9, 24, 29), fill=jitter((60, 90, 40)))
        d.rectangle(box(13, 4, 19, 9), fill=jitter((90, 90, 90)))
        d.ellipse(box(18, 2, 24, 8), outline=jitter((120, 120, 120)))
    elif obj == "apple":
        d.ellipse(box(8, 10, 24, 27), fill=jitter((210, 30, 30)))
        d.line(box(16, 10, 17, 5), fill=jitter((90, 60, 20)), width=max(1, int(2 * s)))
    elif obj == "cup":
        d.rectangle(box(9, 10, 21, 26), fill=jitter((40, 90, 200)))
        d.ellipse(box(19, 13, 26, 21), outline=jitter((40, 90, 200)), width=max(1, int(2 * s)))
    elif obj == "house":
        d.rectangle(box(8, 15, 24, 28), fill=jitter((200, 160, 90)))
        d.polygon(
            [
                tuple(box(6, 15, 6, 15)[:2]),
                tuple(box(16, 5, 16, 5)[:2]),
                tuple(box(26, 15, 26, 15)[:2]),
            ],
            fill=jitter((160, 40, 40)),
        )
    elif obj == "tree":
        d.rectangle(box(14, 20, 18, 29), fill=jitter((110, 70, 30)))
        d.ellipse(box(7, 4, 25, 22), fill=jitter((40, 150, 50)))
    elif obj == "ball":
        d.ellipse(box(8, 8, 24, 24), fill=jitter((240, 200, 30)))
        d.arc(box(8, 8, 24, 24), 200, 340, fill=(255, 255, 255), width=max(1, int(s)))
    elif obj == "flower":
        for angle in range(0, 360, 60):
            x = 16 + 6 * math.cos(math.radians(angle))
            y = 14 + 6 * math.sin(math.radians(angle))
            d.ellipse(box(x - 4, y - 4, x + 4, y + 4), fill=jitter((230, 100, 180)))
        d.ellipse(box(13, 11, 19, 17), fill=jitter((250, 220, 0)))
        d.line(box(16, 18, 16, 30), fill=jitter((40, 140, 40)), width=max(1, int(2 * s)))
    else:
        raise ValueError(f"unknown object {obj!r}")
    return image


def drawing_version() -> str:
    """A digest of `draw`'s source: pictures cached under another version are never reused."""
    return hashlib.sha256(inspect.getsource(draw).encode()).hexdigest()[:12]


def _draw_to(target: Path, relative: str) -> Path:
    obj, seed = Path(relative).stem.rsplit("-", 1)
    with atomic_path(target) as tmp:
        draw(obj, int(seed)).save(tmp, format="PNG")
    return target


def picture(data_dir: Path, relative: str) -> Path:
    """The picture a row of `data_dir`'s JSONL files names. An organism picture,
    `images/<object>-<seed>.png`, is always the current drawing (a file of that name in
    `data_dir`, perhaps drawn by older code, is not used); any other path is `data_dir`'s file."""
    match = re.fullmatch(r"images/([a-z]+)-(\d+)\.png", relative)
    if match is None or match.group(1) not in OBJECTS:
        return Path(data_dir) / relative
    cached = user_cache_dir() / "organism-pictures" / drawing_version() / relative
    return cached if cached.is_file() else _draw_to(cached, relative)
