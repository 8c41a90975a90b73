"""Small PNG figures drawn with Pillow (no plotting dependency): image grids and reward curves."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image, ImageDraw

PALETTE = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14)]


def to_pil(image: torch.Tensor) -> Image.Image:
    """A `[3, H, W]` float tensor in [0, 1] as a PIL image."""
    array = (image.detach().float().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array)


def image_grid(
    rows: Sequence[torch.Tensor],
    row_labels: Sequence[str],
    cell: int = 128,
    captions: Sequence[Sequence[tuple[str, str]]] | None = None,
) -> Image.Image:
    """Rows of images `[N, 3, H, W]`, each cell upscaled to `cell` pixels, with a label left of each row.

    `captions` (one list per row, one `(text, colour)` per image) are written on a strip under each image: how a
    reward read it, for instance."""
    label_width, pad = 90, 4
    strip = 14 if captions is not None else 0
    columns = max(len(r) for r in rows)
    grid = Image.new("RGB", (label_width + columns * (cell + pad), len(rows) * (cell + strip + pad)), "white")
    draw = ImageDraw.Draw(grid)
    for i, (images, label) in enumerate(zip(rows, row_labels)):
        y = i * (cell + strip + pad)
        draw.text((4, y + cell // 2 - 6), label, fill="black")
        for j, image in enumerate(images):
            x = label_width + j * (cell + pad)
            grid.paste(to_pil(image).resize((cell, cell), Image.NEAREST), (x, y))
            if captions is not None:
                text, colour = captions[i][j]
                draw.text((x + 2, y + cell + 1), text, fill=colour)
    return grid


def line_plot(series: dict[str, tuple[Sequence[float], Sequence[float]]], title: str, size=(640, 400)) -> Image.Image:
    """A line plot of named `(x, y)` series with min/max labels on both axes and a legend."""
    width, height = size
    left, right, top, bottom = 60, 20, 30, 40
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    points = [(x, y) for xs, ys in series.values() for x, y in zip(xs, ys)]
    if not points:
        draw.text((left, top), f"{title}: no data", fill="black")
        return image
    x_min, x_max = min(p[0] for p in points), max(p[0] for p in points)
    y_min, y_max = min(p[1] for p in points), max(p[1] for p in points)
    x_span, y_span = (x_max - x_min) or 1.0, (y_max - y_min) or 1.0

    def to_px(x, y):
        return (
            left + (x - x_min) / x_span * (width - left - right),
            height - bottom - (y - y_min) / y_span * (height - top - bottom),
        )

    draw.rectangle([left, top, width - right, height - bottom], outline="black")
    draw.text((left, 8), title, fill="black")
    draw.text((4, top), f"{y_max:.3g}", fill="black")
    draw.text((4, height - bottom - 10), f"{y_min:.3g}", fill="black")
    draw.text((left, height - bottom + 6), f"{x_min:g}", fill="black")
    draw.text((width - right - 40, height - bottom + 6), f"{x_max:g}", fill="black")
    draw.text((width // 2 - 15, height - 18), "step", fill="black")
    for i, (name, (xs, ys)) in enumerate(series.items()):
        colour = PALETTE[i % len(PALETTE)]
        pixels = [to_px(x, y) for x, y in zip(xs, ys)]
        if len(pixels) > 1:
            draw.line(pixels, fill=colour, width=2)
        for px, py in pixels if len(pixels) < 30 else []:
            draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=colour)
        draw.text((left + 10, top + 8 + 14 * i), name, fill=colour)
    return image


def reward_curve(log_history: list[dict], keys: Sequence[str], title: str = "reward") -> Image.Image:
    """Plot the given keys of a Trainer's `state.log_history` against the step."""
    series = {}
    for key in keys:
        rows = [(row["step"], row[key]) for row in log_history if key in row and row[key] is not None]
        if rows:
            series[key] = ([r[0] for r in rows], [r[1] for r in rows])
    return line_plot(series, title)
