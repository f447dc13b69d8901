"""Labelled image grids (rows x columns of PIL images) as one PIL image; pure, no file I/O."""
from __future__ import annotations

from typing import Sequence

from PIL import Image, ImageDraw, ImageFont

PAD = 2  # pixels between cells and around the grid
LABEL_PAD = 4  # pixels around a label
MAX_ROW_LABEL = 240  # widest row-label column in pixels; longer labels are cut with "..."
BACKGROUND = (255, 255, 255)
INK = (20, 20, 20)


def _font() -> ImageFont.ImageFont:
    return ImageFont.load_default()


def _text_size(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.ImageFont) -> tuple[int, int]:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    return right - left, bottom - top


def _fit(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.ImageFont, width: int) -> str:
    """`text` cut (with "...") to fit in `width` pixels."""
    if _text_size(draw, text, font)[0] <= width:
        return text
    while text and _text_size(draw, text + "...", font)[0] > width:
        text = text[:-1]
    return text + "..." if text else ""


def _check_labels(name: str, labels: Sequence[str] | None, n: int, what: str) -> list[str] | None:
    if labels is None:
        return None
    if isinstance(labels, str) or not isinstance(labels, Sequence):
        raise TypeError(f"{name} must be a list of {n} strings (one per {what}) or None, got {type(labels).__name__}")
    if len(labels) != n:
        raise ValueError(f"{name} has {len(labels)} labels but the grid has {n} {what}s; pass one label per {what}")
    return [str(x) for x in labels]


def grid_geometry(n_rows: int, n_cols: int, cell: tuple[int, int], row_label_width: int = 0,
                  header_height: int = 0) -> tuple[int, int]:
    """Size (width, height) of a grid: PAD around and between cells, plus the label column and header row."""
    w, h = cell
    return (row_label_width + n_cols * (w + PAD) + PAD, header_height + n_rows * (h + PAD) + PAD)


def make_grid(rows: Sequence[Sequence[Image.Image]], row_labels: Sequence[str] | None = None,
              col_labels: Sequence[str] | None = None, cell_size: int | tuple[int, int] | None = None,
              min_cell: int = 64) -> Image.Image:
    """One RGB image of `rows` (list of rows of PIL images), with optional row and column labels.

    Every cell is resized to `cell_size` (default: the largest width and height among the images, at least
    `min_cell` px so labels stay readable; nearest neighbour when enlarging, so tiny 16px images stay crisp).
    Row labels sit in a left column as wide as the longest label (at most MAX_ROW_LABEL px, longer ones are
    cut), column labels in a header row; labels wider than a cell are cut with "...". Size: `grid_geometry`.
    """
    if isinstance(rows, Image.Image) or not isinstance(rows, Sequence) or not rows:
        raise ValueError("rows must be a non-empty list of rows, each a non-empty list of PIL images")
    n_cols = len(rows[0]) if isinstance(rows[0], Sequence) else 0
    for r, row in enumerate(rows):
        if not isinstance(row, Sequence) or not row:
            raise ValueError(f"rows[{r}] must be a non-empty list of PIL images, got {type(row).__name__}")
        if len(row) != n_cols:
            raise ValueError(f"rows[{r}] has {len(row)} images but rows[0] has {n_cols}; every row needs the "
                             "same number of images (pad with a blank Image.new('RGB', size, 'white'))")
        for c, im in enumerate(row):
            if not isinstance(im, Image.Image):
                raise TypeError(f"rows[{r}][{c}] must be a PIL image, got {type(im).__name__}")
    row_labels = _check_labels("row_labels", row_labels, len(rows), "row")
    col_labels = _check_labels("col_labels", col_labels, n_cols, "column")
    if cell_size is None:
        if isinstance(min_cell, bool) or not isinstance(min_cell, int) or min_cell < 1:
            raise ValueError(f"min_cell must be a positive int (pixels), got {min_cell!r}")
        cell = (max(min_cell, *(im.size[0] for row in rows for im in row)),
                max(min_cell, *(im.size[1] for row in rows for im in row)))
    elif isinstance(cell_size, int) and not isinstance(cell_size, bool) and cell_size > 0:
        cell = (cell_size, cell_size)
    elif (isinstance(cell_size, tuple) and len(cell_size) == 2
          and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in cell_size)):
        cell = (int(cell_size[0]), int(cell_size[1]))
    else:
        raise ValueError(f"cell_size must be None, a positive int or a (width, height) pair, got {cell_size!r}")

    font = _font()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    line_h = _text_size(probe, "Ag", font)[1]
    label_w = 0
    if row_labels is not None:
        label_w = min(max(_text_size(probe, s, font)[0] for s in row_labels), MAX_ROW_LABEL) + 2 * LABEL_PAD
    header_h = line_h + 2 * LABEL_PAD if col_labels is not None else 0
    size = grid_geometry(len(rows), n_cols, cell, label_w, header_h)
    grid = Image.new("RGB", size, BACKGROUND)
    draw = ImageDraw.Draw(grid)
    w, h = cell
    for c in range(n_cols):
        x = label_w + PAD + c * (w + PAD)
        if col_labels is not None:
            draw.text((x, LABEL_PAD), _fit(draw, col_labels[c], font, w), fill=INK, font=font)
    for r, row in enumerate(rows):
        y = header_h + PAD + r * (h + PAD)
        if row_labels is not None:
            text = _fit(draw, row_labels[r], font, label_w - 2 * LABEL_PAD)
            draw.text((LABEL_PAD, y + max(0, (h - line_h) // 2)), text, fill=INK, font=font)
        for c, im in enumerate(row):
            im = im.convert("RGB")
            if im.size != cell:
                enlarge = im.size[0] <= w and im.size[1] <= h
                im = im.resize(cell, Image.NEAREST if enlarge else Image.LANCZOS)
            grid.paste(im, (label_w + PAD + c * (w + PAD), y))
    return grid
