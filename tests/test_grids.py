"""Labelled grids (exact sizes and cell placement), PNG provenance of saved grids, and the HTML report."""
import json

import numpy as np
import pytest
from PIL import Image, ImageDraw

from analyses.tiling import LABEL_PAD, PAD, _font, grid_geometry
from explorer.grids import make_grid, save_grid, write_report
from explorer.records import read_png_meta


def _solid(colour, size=(16, 16)):
    return Image.new("RGB", size, colour)


def _rows(n_rows=2, n_cols=3, size=(16, 16)):
    return [[_solid((40 * r, 60 * c, 100), size) for c in range(n_cols)] for r in range(n_rows)]


def test_unlabelled_grid_size_and_cells_exact():
    rows = _rows(2, 3, (80, 70))
    g = make_grid(rows)
    assert g.size == (3 * (80 + PAD) + PAD, 2 * (70 + PAD) + PAD) == (248, 146)
    arr = np.asarray(g)
    for r in range(2):
        for c in range(3):
            x, y = PAD + c * (80 + PAD), PAD + r * (70 + PAD)
            np.testing.assert_array_equal(arr[y:y + 70, x:x + 80], np.asarray(rows[r][c]))
    assert tuple(arr[0, 0]) == (255, 255, 255)  # the padding is white


def test_small_images_are_enlarged_to_min_cell_and_cell_size_wins():
    assert make_grid(_rows(1, 2)).size == (2 * (64 + PAD) + PAD, 64 + 2 * PAD)
    assert make_grid(_rows(1, 2), min_cell=16).size == (2 * 18 + PAD, 20)
    g = make_grid(_rows(2, 2, (40, 40)), cell_size=(30, 20))
    assert g.size == grid_geometry(2, 2, (30, 20)) == (66, 46)


def test_labelled_grid_size_exact():
    rows = _rows(2, 3)
    row_labels, col_labels = ["image -> image", "a red circle -> a blue square"], ["t=0.00", "t=0.50", "t=1.00"]
    g = make_grid(rows, row_labels, col_labels)
    draw, font = ImageDraw.Draw(Image.new("RGB", (1, 1))), _font()
    widest = max(draw.textbbox((0, 0), s, font=font)[2] - draw.textbbox((0, 0), s, font=font)[0] for s in row_labels)
    box = draw.textbbox((0, 0), "Ag", font=font)
    label_w, header_h = widest + 2 * LABEL_PAD, box[3] - box[1] + 2 * LABEL_PAD
    assert g.size == (label_w + 3 * 66 + PAD, header_h + 2 * 66 + PAD)
    # the bottom-right cell is the last image, enlarged 4x
    x, y = g.size[0] - PAD - 64, g.size[1] - PAD - 64
    np.testing.assert_array_equal(np.asarray(g.crop((x, y, x + 64, y + 64))),
                                  np.asarray(rows[1][2].resize((64, 64), Image.NEAREST)))
    # labels are drawn: the header strip is not blank
    assert (np.asarray(g.crop((label_w, 0, g.size[0], header_h))) < 128).any()


def test_grid_errors():
    with pytest.raises(ValueError, match="rows must be a non-empty list of rows"):
        make_grid([])
    with pytest.raises(ValueError, match=r"rows\[1\] has 2 images but rows\[0\] has 3"):
        make_grid([_rows(1, 3)[0], _rows(1, 2)[0]])
    with pytest.raises(TypeError, match=r"rows\[0\]\[1\] must be a PIL image, got str"):
        make_grid([[_solid("red"), "x.png"]])
    with pytest.raises(ValueError, match="row_labels has 1 labels but the grid has 2 rows"):
        make_grid(_rows(2, 2), row_labels=["a"])
    with pytest.raises(TypeError, match="col_labels must be a list of 2 strings"):
        make_grid(_rows(2, 2), col_labels="ab")
    with pytest.raises(ValueError, match="cell_size must be None, a positive int or a"):
        make_grid(_rows(1, 1), cell_size=0)
    with pytest.raises(ValueError, match="min_cell must be a positive int"):
        make_grid(_rows(1, 1), min_cell=0)


def test_save_grid_round_trips_settings_atomically(tmp_path):
    g = make_grid(_rows(1, 2))
    path = save_grid(g, tmp_path / "sub" / "grid.png", {"model": "tiny", "seed": 3, "ks": [1, 2]})
    assert read_png_meta(path) == {"model": "tiny", "seed": 3, "ks": [1, 2]}
    with Image.open(path) as im:
        assert im.size == g.size
        np.testing.assert_array_equal(np.asarray(im.convert("RGB")), np.asarray(g))
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["grid.png"]  # no temporary file left
    with pytest.raises(ValueError, match="path must end in .png"):
        save_grid(g, tmp_path / "grid.jpg", {})
    with pytest.raises(TypeError, match="image must be a PIL image"):
        save_grid("grid.png", tmp_path / "g.png", {})
    with pytest.raises(TypeError, match="settings must be a dict"):
        save_grid(g, tmp_path / "g.png", [1])


def test_write_report(tmp_path):
    save_grid(make_grid(_rows(1, 1)), tmp_path / "a.png", {"seed": 1, "prompt": "<b>bold</b>"})
    index = write_report(tmp_path, "My <report>", [
        {"image": "a.png", "title": "first"},
        {"image": _solid("red"), "name": "made", "title": "second", "caption": "a caption",
         "settings": {"k": 4}},
    ])
    text = index.read_text()
    assert index == tmp_path / "index.html"
    assert "<title>My &lt;report&gt;</title>" in text
    assert "src='a.png'" in text and "src='made.png'" in text
    assert "&lt;b&gt;bold&lt;/b&gt;" in text  # settings read back from a.png's provenance, escaped
    assert "<th>k</th><td>4</td>" in text and "<figcaption>a caption</figcaption>" in text
    assert read_png_meta(tmp_path / "made.png") == {"k": 4}
    assert json.loads(json.dumps(read_png_meta(tmp_path / "a.png")))["seed"] == 1
    with pytest.raises(FileNotFoundError, match=r"items\[0\]\['image'\]: no such file"):
        write_report(tmp_path, "t", [{"image": "nope.png"}])
    with pytest.raises(ValueError, match=r"items\[0\] must be a dict with an 'image' key"):
        write_report(tmp_path, "t", [{"title": "x"}])
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="is not a directory"):
        write_report(tmp_path / "file", "t", [])
