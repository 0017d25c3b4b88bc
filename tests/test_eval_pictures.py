"""hsr_eval.tasks.pictures: organism-vl's pictures, drawn on demand and never served stale."""

from __future__ import annotations

from hsr_eval.tasks.pictures import OBJECTS, draw, drawing_version, picture


def test_an_organism_picture_is_the_current_drawing_not_an_old_file(tmp_path, monkeypatch):
    monkeypatch.setenv("HSR_CACHE_DIR", str(tmp_path / "cache"))
    stale = tmp_path / "data" / "images" / "knife-7.png"
    stale.parent.mkdir(parents=True)
    draw("apple", 1).save(stale)  # a file of that name, drawn by other code
    path = picture(tmp_path / "data", "images/knife-7.png")
    assert drawing_version() in path.parts and path.read_bytes() != stale.read_bytes()
    from PIL import Image

    with Image.open(path) as image:
        assert image.tobytes() == draw("knife", 7).tobytes()
    assert picture(tmp_path / "data", "images/knife-7.png") == path  # drawn once, then reused


def test_any_other_picture_is_the_data_folders_own(tmp_path):
    assert picture(tmp_path, "photos/street.jpg") == tmp_path / "photos" / "street.jpg"
    assert picture(tmp_path, "images/unicorn-3.png") == tmp_path / "images" / "unicorn-3.png"


def test_every_object_draws_deterministically_and_differs_by_seed():
    for obj in OBJECTS:
        assert draw(obj, 3).tobytes() == draw(obj, 3).tobytes()
        assert draw(obj, 3).tobytes() != draw(obj, 4).tobytes(), obj
