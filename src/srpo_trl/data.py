"""Prompt datasets: loading from the Hub or local files, checking prompts, and real images for offline mode."""

from __future__ import annotations

import os

import numpy as np
import torch

_LOCAL_FORMATS = {".txt": "text", ".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}


def load_prompt_dataset(
    name_or_path: str,
    split: str = "train",
    prompt_column: str = "prompt",
    shuffle_seed: int | None = None,
    streaming: bool = False,
):
    """A `datasets.Dataset` of prompts from a hub dataset id, a local folder, or a local file.

    Local files: `.txt` (one prompt a line, becomes the `prompt_column`), `.csv`, `.json`, `.jsonl`,
    `.parquet`. `shuffle_seed` shuffles the rows once, reproducibly.
    """
    from datasets import load_dataset

    extension = os.path.splitext(name_or_path)[1].lower()
    if extension in _LOCAL_FORMATS:
        if not os.path.isfile(name_or_path):
            raise FileNotFoundError(f"dataset file {name_or_path!r} does not exist")
        # Local files form a single split, always called "train" by `datasets`.
        dataset = load_dataset(_LOCAL_FORMATS[extension], data_files=name_or_path, split="train", streaming=streaming)
        if extension == ".txt" and prompt_column != "text":
            dataset = dataset.rename_column("text", prompt_column)
    else:
        dataset = load_dataset(name_or_path, split=split, streaming=streaming)
    if shuffle_seed is not None:
        dataset = dataset.shuffle(seed=shuffle_seed)
    return dataset


def _columns(dataset) -> list[str] | None:
    names = getattr(dataset, "column_names", None)
    if names is None and getattr(dataset, "features", None) is not None:
        names = list(dataset.features)
    return list(names) if names is not None else None


def _column(dataset, column: str) -> list:
    """A map-style `datasets.Dataset`'s column as a list.

    `datasets` 4+ returns a lazy column whose iteration formats one row at a time (0.05-0.13 ms a row: 5-13 s for
    HPDv2's 10^5 prompts, and the trainer reads them twice); a slice is read in one go (and is a plain copy where
    the column is already a list).
    """
    return list(dataset[column][:])


def bad_prompt(value) -> bool:
    return not isinstance(value, str) or not value.strip()


def check_columns(dataset, columns: list[tuple[str, str]], what: str = "train_dataset") -> None:
    """Raise a `ValueError` naming a missing column and the `SRPOConfig` field that sets it.

    `columns` holds `(field name, column)` pairs; streamed datasets without declared columns pass.
    """
    present = _columns(dataset)
    if present is None:
        return
    for field_name, column in columns:
        if column not in present:
            raise ValueError(
                f"{what} has no column {column!r}; its columns are {present}. Set SRPOConfig.{field_name}."
            )


def check_dataset(dataset, prompt_column: str, what: str = "train_dataset", image_column: str | None = None) -> None:
    """Raise a `ValueError` naming the problem if the dataset cannot feed SRPO (before any model work).

    Map-style datasets are checked row by row (empty or non-string prompts are listed by index);
    streamed datasets only by their declared columns, and their rows as they arrive (see `check_prompts`).
    """
    if dataset is None:
        return
    required = [("dataset_prompt_column", prompt_column)]
    if image_column is not None:
        required.append(("dataset_image_column", image_column))
    check_columns(dataset, required, what)
    if not hasattr(dataset, "__len__"):
        return
    if len(dataset) == 0:
        raise ValueError(f"{what} is empty: SRPO needs at least one prompt")
    columnar = hasattr(dataset, "column_names")
    prompts = _column(dataset, prompt_column) if columnar else [row[prompt_column] for row in dataset]
    bad = [i for i, p in enumerate(prompts) if bad_prompt(p)]
    if bad:
        examples = ", ".join(f"row {i}: {prompts[i]!r}" for i in bad[:5])
        raise ValueError(
            f"{what}: {len(bad)} of {len(prompts)} rows have an empty or non-string {prompt_column!r} ({examples}"
            f"{', ...' if len(bad) > 5 else ''}); remove them, e.g. dataset.filter(lambda r: "
            f"isinstance(r[{prompt_column!r}], str) and r[{prompt_column!r}].strip())"
        )


def check_prompts(prompts: list, prompt_column: str) -> list[str]:
    """The batch's prompts, or a `ValueError` naming the first bad one (for streamed datasets)."""
    for p in prompts:
        if bad_prompt(p):
            raise ValueError(f"dataset row with an empty or non-string {prompt_column!r}: {p!r}")
    return list(prompts)


def dataset_prompts(dataset, prompt_column: str) -> list[str] | None:
    """All prompts of a map-style dataset (for caching their embeddings), or `None` for a stream."""
    if dataset is None:
        return []
    if not hasattr(dataset, "__len__"):
        return None
    if hasattr(dataset, "column_names"):
        return _column(dataset, prompt_column)
    return [dataset[i][prompt_column] for i in range(len(dataset))]


def has_image_column(dataset, image_column: str) -> bool:
    columns = _columns(dataset)
    return columns is not None and image_column in columns


def image_to_tensor(image, height: int, width: int) -> torch.Tensor:
    """A PIL image, or a path to one, as a float tensor `[3, height, width]` in [0, 1].

    Resized (bicubic, antialiased by PIL) so that it covers `height x width`, then centre-cropped.
    """
    from PIL import Image

    if isinstance(image, (str, os.PathLike)):
        if not os.path.isfile(image):
            raise FileNotFoundError(f"image {str(image)!r} does not exist")
        image = Image.open(image)
    if not isinstance(image, Image.Image):
        raise TypeError(f"expected a PIL image or a path in the image column, got {type(image).__name__}")
    image = image.convert("RGB")
    scale = max(height / image.height, width / image.width)
    size = (max(width, round(image.width * scale)), max(height, round(image.height * scale)))
    image = image.resize(size, Image.Resampling.BICUBIC)
    left, top = (size[0] - width) // 2, (size[1] - height) // 2
    image = image.crop((left, top, left + width, top + height))
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()


def reference_batch(images, height: int, width: int) -> torch.Tensor:
    """Reference images for `SRPOTrainer.generate` as the data pipeline gives them to the trainer: `[B, 3, height,
    width]` in [0, 1], resized to cover that size and centre-cropped. Takes a tensor `[B, 3, H, W]` in [0, 1] (used as
    it is when already at that size) or a list of PIL images or paths."""
    from PIL import Image

    if isinstance(images, torch.Tensor):
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"reference_images: expected a tensor [B, 3, H, W] in [0, 1], got {tuple(images.shape)}")
        if tuple(images.shape[-2:]) == (height, width):
            return images
        pixels = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu()
        images = [Image.fromarray(array.numpy()) for array in pixels]
    return torch.stack([image_to_tensor(image, height, width) for image in images])


def collate_rows(
    features: list[dict],
    args,
    height: int,
    width: int,
    reference: tuple[int, int] | None,
    offline: bool,
    reference_column: str | None = None,
    masks: bool = False,
) -> dict:
    """A batch of dataset rows for the trainer: the prompts (checked), the reference images of editing families
    resized and centre-cropped to `reference` (height, width) with, for Fill (`masks`), their masks, and, offline, the
    real images, resized and centre-cropped to `height x width`."""
    column = args.dataset_prompt_column
    batch = {"prompt": check_prompts([f[column] for f in features], column)}
    if reference is not None:
        column = reference_column or args.dataset_reference_image_column  # Control's: the control image column
        batch["reference_images"] = torch.stack([image_to_tensor(f[column], *reference) for f in features])
    if masks:
        from .masks import mask_to_tensor

        column = args.dataset_mask_column
        batch["masks"] = torch.stack([mask_to_tensor(f[column], *reference) for f in features])
    column = args.dataset_image_column
    if offline and column in features[0]:  # eval prompts come without images
        batch["images"] = torch.stack([image_to_tensor(f[column], height, width) for f in features])
    return batch
