"""The shapes world: procedurally drawn, captioned 64-px images that the shipped tiny models learn.

A scene is one shape in one colour at one position, drawn in one of two styles that the captions name:

- `photo`: a dark, textured, lit background (wall and floor), the shape shaded by a light from the top
  left, with a highlight and a drop shadow;
- `drawing`: plain paper, the shape in a flat fill with a dark outline.

The two styles play the part of the paper's "Real" and "Painting": SRP with `+photo / -drawing` should make
a model's samples more photo-like while keeping what they show (shape, colour, position).

Captions come in three forms: `"a photo of a red circle on the left"` (style named), `"photo. a red circle
on the left"` (the form SRP shows a reward: the control word before the prompt) and `"a red circle on the
left"` (style left open, so that the base model draws both styles for such a prompt).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import product

import numpy as np

SIZE = 64
SHAPES = ("circle", "square", "triangle")
COLOURS = {
    "red": (0.86, 0.13, 0.11),
    "green": (0.16, 0.68, 0.22),
    "blue": (0.16, 0.32, 0.90),
    "yellow": (0.95, 0.84, 0.12),
    "purple": (0.58, 0.20, 0.74),
}
POSITIONS = {  # phrase -> centre (x, y) in pixels
    "on the left": (19.0, 32.0),
    "on the right": (45.0, 32.0),
    "at the top": (32.0, 19.0),
    "at the bottom": (32.0, 45.0),
}
STYLES = ("photo", "drawing")
#: Every word the captions use, for the word-level tokenizer of the shipped T5.
WORDS = ("a", "of", "on", "at", "the", "left", "right", "top", "bottom", *SHAPES, *COLOURS, *STYLES)


@dataclass(frozen=True)
class Scene:
    shape: str
    colour: str
    position: str
    style: str

    @property
    def content(self) -> str:
        """The caption without the style: `"a red circle on the left"`."""
        return content_prompt(self.shape, self.colour, self.position)

    def caption(self, form: str) -> str:
        """`form`: `"named"` (`"a photo of ..."`), `"control"` (`"photo. ..."`) or `"open"` (no style)."""
        if form == "named":
            return f"a {self.style} of {self.content}"
        if form == "control":
            return f"{self.style}. {self.content}"
        if form == "open":
            return self.content
        raise ValueError(f"caption form must be 'named', 'control' or 'open', got {form!r}")


def content_prompt(shape: str, colour: str, position: str) -> str:
    return f"a {colour} {shape} {position}"


def all_contents() -> list[tuple[str, str, str]]:
    """Every (shape, colour, position), in a fixed order."""
    return list(product(SHAPES, COLOURS, POSITIONS))


def all_scenes() -> list[Scene]:
    """Every (shape, colour, position, style): the classes of the world, in a fixed order."""
    return [Scene(*content, style) for content in all_contents() for style in STYLES]


def _signed_distance(shape: str, x: np.ndarray, y: np.ndarray, cx: float, cy: float, r: float) -> np.ndarray:
    """Distance in pixels to the shape's edge: negative inside."""
    dx, dy = x - cx, y - cy
    if shape == "circle":
        return np.hypot(dx, dy) - r
    if shape == "square":
        return np.maximum(np.abs(dx), np.abs(dy)) - 0.85 * r
    if shape == "triangle":  # pointing up; the inradius 0.6 r puts its corners at 1.2 r from the centre
        edges = [(0.0, 1.0), (0.866, -0.5), (-0.866, -0.5)]
        return np.max([nx * dx + ny * dy for nx, ny in edges], axis=0) - 0.6 * r
    raise ValueError(f"unknown shape {shape!r}")


def _smooth_noise(rng: np.random.Generator, cells: int, amplitude: float) -> np.ndarray:
    """Low-frequency texture: a `cells` x `cells` grid of noise, bilinearly upsampled to the image size."""
    grid = rng.normal(0.0, amplitude, (cells + 1, cells + 1))
    t = np.linspace(0, cells, SIZE)
    i = np.minimum(t.astype(int), cells - 1)
    f = t - i
    rows = grid[i] * (1 - f)[:, None] + grid[i + 1] * f[:, None]
    return rows[:, i] * (1 - f)[None, :] + rows[:, i + 1] * f[None, :]


def draw(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """The scene as a `[64, 64, 3]` uint8 image; `rng` draws the jitter (place, size, tints, texture)."""
    y, x = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64) + 0.5
    cx, cy = np.array(POSITIONS[scene.position]) + rng.uniform(-3, 3, 2)
    r = rng.uniform(9.0, 12.0)
    d = _signed_distance(scene.shape, x, y, cx, cy, r)
    inside = np.clip(0.5 - d, 0, 1)[..., None]  # one pixel of antialiasing
    colour = np.clip(np.array(COLOURS[scene.colour]) + rng.uniform(-0.04, 0.04, 3), 0, 1)

    if scene.style == "drawing":
        paper = 0.95 + rng.uniform(-0.03, 0.03, 3)
        image = paper * (1 - inside) + colour * inside
        outline = np.clip(1.6 - np.abs(d + 0.5), 0, 1)[..., None]
        image = image * (1 - outline) + 0.08 * outline
    else:
        wall = rng.uniform(0.22, 0.45) * np.array([1.0, rng.uniform(0.85, 1.0), rng.uniform(0.7, 0.95)])
        horizon = rng.uniform(40, 48)
        floor = np.clip(wall * rng.uniform(1.3, 1.7), 0, 1)
        is_floor = np.clip(y - horizon, 0, 1)[..., None]
        background = wall * (1 - is_floor) + floor * is_floor
        background = background * (1 + 0.25 * (1 - y / SIZE))[..., None]  # lit from above
        background = background + _smooth_noise(rng, 8, 0.05)[..., None] + rng.normal(0, 0.015, (SIZE, SIZE, 1))
        shadow = np.clip(0.5 - _signed_distance(scene.shape, x, y, cx + 4, cy + 4, r * 1.05), 0, 1)[..., None]
        background = background * (1 - 0.55 * shadow)
        shade = np.clip(1.0 + 0.45 * ((cx - x) + (cy - y)) / (1.4 * r), 0.45, 1.35)[..., None]
        lit = np.clip(colour * shade, 0, 1)
        if scene.shape == "circle":  # a specular highlight
            spot = np.exp(-((x - cx + 0.35 * r) ** 2 + (y - cy + 0.35 * r) ** 2) / (2 * (0.25 * r) ** 2))[..., None]
            lit = lit + 0.6 * spot * (1 - lit)
        image = background * (1 - inside) + lit * inside
    return (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)


def random_scenes(rng: np.random.Generator, n: int) -> list[Scene]:
    """`n` scenes drawn uniformly from all shapes, colours, positions and styles."""
    classes = all_scenes()
    return [classes[i] for i in rng.integers(0, len(classes), n)]


def render(scenes: list[Scene], rng: np.random.Generator) -> np.ndarray:
    """The scenes drawn as `[N, 64, 64, 3]` uint8."""
    return np.stack([draw(scene, rng) for scene in scenes])


def random_captions(scenes: list[Scene], rng: np.random.Generator, weights: dict[str, float]) -> list[str]:
    """One caption per scene, its form drawn with `weights` (`{"named": .., "control": .., "open": ..}`)."""
    forms = list(weights)
    p = np.array([weights[f] for f in forms], dtype=np.float64)
    picks = rng.choice(len(forms), size=len(scenes), p=p / p.sum())
    return [scene.caption(forms[k]) for scene, k in zip(scenes, picks)]
