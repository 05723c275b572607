"""Sample grids with words on them (`--labels`): a caption under each image, or under each column of a strip.

Small images are first enlarged by a whole factor (nearest neighbour, so no pixel is invented) until a
caption fits under them; the images themselves are the unlabelled grid's, pixel for pixel.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import Tensor

#: Each image is enlarged to at least this many pixels across before captions go under it.
MIN_TILE = 72
FONT_SIZE = 11
_PAD = 4


def _font() -> Any:
    """Pillow's own font at FONT_SIZE (FreeType), or its bitmap font where Pillow was built without FreeType."""
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=FONT_SIZE)
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()


def _fit(draw: Any, text: str, font: Any, width: int) -> str:
    """``text``, shortened with an ellipsis until it is at most ``width`` pixels wide."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def scale_for(height: int, width: int, min_tile: int = MIN_TILE) -> int:
    """The whole enlargement factor that makes an image at least ``min_tile`` pixels across."""
    return max(1, math.ceil(min_tile / max(1, max(height, width))))


def labelled_grid(x: Tensor, nrow: int | None = None, captions: Sequence[str] | None = None,
                  column_captions: Sequence[str] | None = None) -> Tensor:
    """Images in [-1, 1] tiled ``nrow`` per row as uint8 [C, H, W], a caption under each image and/or each column.

    A caption may hold several lines ("step 10\\nsigma 0.52"); each is fitted to the tile's width.
    """
    import numpy as np
    import torch
    from PIL import Image, ImageDraw

    from diffusers_cli.support.image_grids import to_pil, to_uint8

    imgs = to_uint8(x)
    b, c, h, w = imgs.shape
    nrow = nrow or max(1, math.ceil(math.sqrt(b)))
    rows = math.ceil(b / nrow)
    k = scale_for(h, w)
    tw, th = w * k, h * k
    font = _font()
    line_h = FONT_SIZE + 3
    per_image = max((len(s.split("\n")) for s in captions), default=0) * line_h if captions else 0
    per_column = max((len(s.split("\n")) for s in column_captions), default=0) * line_h if column_captions else 0
    cell_h = th + _PAD + per_image
    mode = "L" if c == 1 else "RGB"
    canvas = Image.new(mode, (_PAD + nrow * (tw + _PAD), _PAD + rows * cell_h + per_column), "white")
    draw = ImageDraw.Draw(canvas)

    def write(text: str, left: int, top: int) -> None:
        for j, line in enumerate(text.split("\n")):
            line = _fit(draw, line, font, tw)
            draw.text((left + (tw - draw.textlength(line, font=font)) / 2, top + j * line_h), line, fill="black", font=font)

    for i in range(b):
        r, col = divmod(i, nrow)
        left, top = _PAD + col * (tw + _PAD), _PAD + r * cell_h
        canvas.paste(to_pil(imgs[i]).resize((tw, th), Image.Resampling.NEAREST), (left, top))
        if captions is not None and i < len(captions):
            write(captions[i], left, top + th + 1)
    for col, text in enumerate(column_captions or ()):
        write(text, _PAD + col * (tw + _PAD), _PAD + rows * cell_h)
    arr = torch.from_numpy(np.asarray(canvas).copy())
    return arr.unsqueeze(0) if c == 1 else arr.permute(2, 0, 1).contiguous()
