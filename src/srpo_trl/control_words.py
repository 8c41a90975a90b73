"""Control-word presets for Semantic Relative Preference.

SRP puts a positive and a negative word before the prompt and rewards the difference, so the words
choose what training pushes towards and away from. Only `hps-realism` was tuned (for HPSv2.1, by the
SRPO authors); the other presets are documented starting points whose words follow the paper's
examples of controllable attributes, not tuned recipes.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ControlWordPreset:
    positive: tuple[str, ...]
    negative: tuple[str, ...]
    intent: str
    tuned: bool = False


CONTROL_WORD_PRESETS: dict[str, ControlWordPreset] = {
    "hps-realism": ControlWordPreset(
        positive=("Natural-lighting", "Detail", "Detailed", "Real"),
        negative=("Concept art", "Painting", "Anime", "Flat", "Oil"),
        intent="Photorealism: away from the painterly, oily, over-smooth look. The published recipe, tuned "
        "for HPSv2.1.",
        tuned=True,
    ),
    "detail": ControlWordPreset(
        positive=("Detailed", "Sharp", "High-resolution"),
        negative=("Blurry", "Smooth", "Low-resolution"),
        intent="Fine texture and sharpness, against over-smoothing; not tuned.",
    ),
    "brightness": ControlWordPreset(
        positive=("Bright", "Well-lit"),
        negative=("Dark", "Dim"),
        intent="Brighter, better-lit images; the paper shows brightness as a controllable attribute; not tuned.",
    ),
}

RECIPE_POSITIVE_WORDS = list(CONTROL_WORD_PRESETS["hps-realism"].positive)
RECIPE_NEGATIVE_WORDS = list(CONTROL_WORD_PRESETS["hps-realism"].negative)


def control_word_preset(name: str) -> ControlWordPreset:
    """The preset called `name`; a `ValueError` names the valid presets otherwise."""
    try:
        return CONTROL_WORD_PRESETS[name]
    except KeyError:
        raise ValueError(
            f"control_words={name!r} is not a preset; valid presets: {sorted(CONTROL_WORD_PRESETS)} (or give "
            "positive_control_words and negative_control_words as lists)"
        ) from None
