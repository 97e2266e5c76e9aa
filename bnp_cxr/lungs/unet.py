"""Lung masks: a Keras U-Net (Ronneberger et al., MICCAI 2015) trained on image + mask folders.

Images go through the records' geometry (bnp_cxr.records.prepare: full-resolution intensity window,
INTER_AREA letterbox padded with air, window applied after resizing; masks set where at least half
of a pixel's source area was set), so a model trained here fits record images of the same size.
Saved as `.keras` with a JSON sidecar (`<name>.json`: size, held-out Dice, counts, data, date).
"""

from __future__ import annotations

import csv
import datetime
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import keras
import numpy as np
import tensorflow as tf

from bnp_cxr.data import imaging
from bnp_cxr.workspace import LATERAL_VIEWS
from bnp_cxr.records.prepare import MaskError, MaskStack, letterbox, letterbox_geometry, read_mask

PathLike = str | os.PathLike
MANIFEST_MASK_COLUMN = "lung_mask_path"


class LungDataError(ValueError):
    """A mask folder, index or manifest that cannot be used as training pairs."""


@dataclass(frozen=True)
class LungReject:
    """One image/mask pair that could not be read (the other pairs go on)."""

    image_path: str
    mask_path: str
    reason: str
    detail: str


@dataclass
class LungTrainResult:
    """The best model (highest held-out Dice) and its per-image held-out Dice."""

    model: keras.Model
    dice_mean: float
    dice_per_image: np.ndarray
    n_train: int
    n_val: int
    history: dict
    val_indices: np.ndarray = field(default_factory=lambda: np.zeros(0, int))


# ---------------------------------------------------------------------------------------------- model

def _conv_block(x, filters: int, name: str):
    for k in (1, 2):
        # No conv bias: batch normalisation's beta replaces it.
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv{k}")(x)
        # Momentum 0.9 (Keras: 0.99): the moving statistics settle within the few hundred steps of a small set.
        x = keras.layers.BatchNormalization(momentum=0.9, name=f"{name}_bn{k}")(x)
        x = keras.layers.Activation("relu", name=f"{name}_relu{k}")(x)
    return x


def build_unet(size: int, *, base_filters: int = 16, depth: int = 4) -> keras.Model:
    """U-Net [B,size,size,1] in [0,1] -> sigmoid lung probability [B,size,size,1]; filters double per level."""
    if depth < 1 or size % 2 ** depth:
        raise ValueError(f"size {size} must be divisible by 2**depth = {2 ** depth} (depth >= 1)")
    inputs = keras.Input((size, size, 1), name="image")
    x, skips = inputs, []
    for level in range(depth):
        x = _conv_block(x, base_filters * 2 ** level, f"down{level}")
        skips.append(x)
        x = keras.layers.MaxPooling2D(2, name=f"down{level}_pool")(x)
    x = _conv_block(x, base_filters * 2 ** depth, "bottleneck")
    for level in reversed(range(depth)):
        filters = base_filters * 2 ** level
        x = keras.layers.Conv2DTranspose(filters, 2, strides=2, name=f"up{level}_upconv")(x)
        x = keras.layers.Concatenate(name=f"up{level}_concat")([x, skips[level]])
        x = _conv_block(x, filters, f"up{level}")
    outputs = keras.layers.Conv2D(1, 1, activation="sigmoid", name="lung_probability")(x)
    return keras.Model(inputs, outputs, name=f"unet{size}")


@keras.saving.register_keras_serializable(package="bnp_cxr.lungs")
def bce_soft_dice_loss(y_true, y_pred):
    """Binary cross-entropy plus (1 - per-image soft Dice): BCE for pixel calibration, Dice for overlap."""
    y_true = tf.cast(y_true, y_pred.dtype)
    bce = tf.reduce_mean(keras.losses.binary_crossentropy(y_true, y_pred), axis=(1, 2))
    overlap = tf.reduce_sum(y_true * y_pred, axis=(1, 2, 3))
    total = tf.reduce_sum(y_true + y_pred, axis=(1, 2, 3))
    soft_dice = (2.0 * overlap + 1.0) / (total + 1.0)
    return bce + 1.0 - soft_dice


@keras.saving.register_keras_serializable(package="bnp_cxr.lungs")
def dice_metric(y_true, y_pred):
    """Per-image Dice of the 0.5-thresholded prediction (empty vs empty = 1); Keras averages over images."""
    predicted = tf.cast(y_pred > 0.5, tf.float32)
    truth = tf.cast(y_true > 0.5, tf.float32)
    overlap = tf.reduce_sum(predicted * truth, axis=(1, 2, 3))
    total = tf.reduce_sum(predicted + truth, axis=(1, 2, 3))
    return tf.where(total > 0, 2.0 * overlap / tf.maximum(total, 1.0), 1.0)


def dice(predicted: np.ndarray, truth: np.ndarray) -> float:
    """Dice 2|A&B| / (|A| + |B|) of two boolean masks of one image; 1.0 when both are empty."""
    predicted, truth = np.asarray(predicted, bool), np.asarray(truth, bool)
    if predicted.shape != truth.shape:
        raise ValueError(f"mask shapes differ: {predicted.shape} vs {truth.shape}")
    total = int(predicted.sum()) + int(truth.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(predicted, truth).sum()) / total


def dice_per_image(predicted: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """dice() of each image of two [N,H,W] boolean stacks."""
    return np.array([dice(p, t) for p, t in zip(predicted, truth, strict=True)], dtype=np.float64)


# ----------------------------------------------------------------------------------------------- data

def _read_csv(path: Path) -> tuple[list[str], list[dict]]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            return list(reader.fieldnames or []), list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise LungDataError(f"cannot read {path}: {error}") from error


def _row_problem(root: Path, row: dict, image_column: str, mask_column: str, seen: set[str]) -> tuple[str, str]:
    """(reason, detail) when a CSV row cannot be a training pair, else ("", "")."""
    if row.get("view", "").strip().upper() in LATERAL_VIEWS:
        return "lateral_view", f"view {row['view'].strip()!r}: lung masks are for frontal radiographs"
    for column in (image_column, mask_column):
        text = (row.get(column) or "").strip()
        if not text:
            return "missing_path", f"{column} is empty"
        if not (root / text).is_file():
            return "file_not_found", f"{column} {str(root / text)!r} not found"
    if str(root / row[image_column].strip()) in seen:
        return "duplicate_row", f"{image_column} {row[image_column].strip()!r} is listed twice"
    return "", ""


def read_mask_folder(folder: PathLike, *, index: str = "index.csv",
                     rejects: list[LungReject] | None = None) -> list[tuple[str, str]]:
    """(image_path, mask_path) pairs from folder/index (columns image, mask) or a manifest CSV (lung_mask_path).

    Paths are relative to the CSV's folder. Manifest rows without a lung_mask_path are not pairs. Rows
    naming missing files, lateral views (a `view` column) or an image already listed are problems: each
    is appended to `rejects` and the rest go on, or, without a list, they raise one LungDataError naming
    the CSV line (header = line 1) and file of each.
    """
    folder = Path(folder)
    csv_path = folder if folder.is_file() else folder / index
    if not csv_path.is_file():
        raise LungDataError(f"no index at {csv_path}: expected a CSV with image and mask columns, "
                            f"or a manifest CSV with image_path and {MANIFEST_MASK_COLUMN}")
    columns, rows = _read_csv(csv_path)
    if MANIFEST_MASK_COLUMN in columns and "image_path" in columns:
        image_column, mask_column = "image_path", MANIFEST_MASK_COLUMN
    elif "image" in columns and "mask" in columns:
        image_column, mask_column = "image", "mask"
    else:
        raise LungDataError(f"{csv_path} has columns {columns}: need image and mask, "
                            f"or image_path and {MANIFEST_MASK_COLUMN}")
    root, pairs, problems, seen = csv_path.parent, [], [], set()
    for line, row in enumerate(rows, start=2):
        if mask_column == MANIFEST_MASK_COLUMN and not (row.get(mask_column) or "").strip():
            continue
        reason, detail = _row_problem(root, row, image_column, mask_column, seen)
        image, mask = (str(root / (row.get(column) or "").strip()) for column in (image_column, mask_column))
        if reason:
            problems.append(LungReject(image, mask, reason, f"{csv_path.name} line {line}: {detail}"))
        else:
            seen.add(image)
            pairs.append((image, mask))
    if problems and rejects is None:
        shown = "\n  ".join(f"{p.reason}: {p.detail}" for p in problems[:10])
        more = f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else ""
        raise LungDataError(f"{len(problems)} row(s) of {csv_path} cannot be used:\n  {shown}{more}")
    if rejects is not None:
        rejects.extend(problems)
    if not pairs:
        raise LungDataError(f"{csv_path} lists no usable image/mask pairs")
    return pairs


def prepare_pair(image_path: str, mask_path: str, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One image (float32 [size,size] in [0,1]) and mask (bool) in the records' letterbox geometry."""
    pixels = imaging.read_radiograph(image_path).pixels
    lung = read_mask(mask_path, pixels.shape, binary=True, column="mask")
    geometry = letterbox_geometry(*pixels.shape, size)
    # As bnp_cxr.records.prepare.prepare_row: window on the full image, pad with its low end, window after resizing.
    window = imaging.intensity_window(pixels)
    image = imaging.apply_window(letterbox(pixels, geometry, fill=window[0]), window)
    mask, _ = MaskStack(lung, None).at(geometry)
    return image, mask.astype(bool)


def load_pairs(pairs: list[tuple[str, str]], size: int, *,
               rejects: list[LungReject] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(images float32 [N,size,size,1] in [0,1], masks bool [N,size,size]); unreadable pairs are skipped.

    Each skipped pair is appended to `rejects` (or warned about when no list is given).
    """
    images, masks = [], []
    for image_path, mask_path in pairs:
        try:
            image, mask = prepare_pair(image_path, mask_path, size)
        except (imaging.RadiographError, MaskError) as error:
            reject = LungReject(image_path, mask_path, error.reason, error.detail)
            if rejects is None:
                warnings.warn(f"skipped {image_path}: {reject.reason}: {reject.detail}", stacklevel=2)
            else:
                rejects.append(reject)
            continue
        images.append(image)
        masks.append(mask)
    if not images:
        raise LungDataError(f"none of the {len(pairs)} image/mask pairs could be read")
    return np.stack(images)[..., None].astype(np.float32), np.stack(masks)


# ------------------------------------------------------------------------------------------- training

def _augment(image, mask, size: int):
    """Small random affine (rotation +-7 deg, scale +-7 %, shift +-5 %) on image and mask, then gain/gamma.

    No horizontal flip: the heart is on the patient's left, and flipped anatomy is not a radiograph.
    """
    angle = tf.random.uniform([], -7.0, 7.0) * (np.pi / 180.0)
    scale = tf.random.uniform([], 0.93, 1.07)
    shift = tf.random.uniform([2], -0.05, 0.05) * size
    centre = (size - 1) / 2.0
    cos, sin = tf.cos(angle) / scale, tf.sin(angle) / scale
    # Output -> input map: rotate/scale about the centre, then shift.
    transform = tf.stack([cos, -sin, centre - cos * centre + sin * centre - shift[0],
                          sin, cos, centre - sin * centre - cos * centre - shift[1], 0.0, 0.0])
    both = tf.concat([image, mask], axis=-1)[None]
    # Fill 0 is air, the same value as the letterbox padding.
    moved = tf.raw_ops.ImageProjectiveTransformV3(images=both, transforms=transform[None], output_shape=[size, size],
                                                  fill_value=0.0, interpolation="BILINEAR", fill_mode="CONSTANT")[0]
    gain = tf.random.uniform([], 0.9, 1.1)
    gamma = tf.exp(tf.random.uniform([], -0.2, 0.2))
    image = tf.clip_by_value(moved[..., :1] * gain, 0.0, 1.0) ** gamma
    return image, tf.cast(moved[..., 1:] > 0.5, tf.float32)


def _dataset(images, masks, batch_size: int, *, shuffle_seed: int | None, augment: bool) -> tf.data.Dataset:
    data = tf.data.Dataset.from_tensor_slices((images, masks[..., None].astype(np.float32)))
    if shuffle_seed is not None:
        data = data.shuffle(len(images), seed=shuffle_seed, reshuffle_each_iteration=True)
    if augment:
        data = data.map(lambda x, y: _augment(x, y, images.shape[1]), num_parallel_calls=tf.data.AUTOTUNE)
    return data.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) indices from a seeded permutation; at least one image on each side."""
    if n < 2 or not 0.0 < val_fraction < 1.0:
        raise ValueError(f"need >= 2 images and 0 < val_fraction < 1, got {n} and {val_fraction}")
    order = np.random.default_rng(seed).permutation(n)
    n_val = min(n - 1, max(1, round(n * val_fraction)))
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def train_lung_model(images: np.ndarray, masks: np.ndarray, *, epochs: int, batch_size: int,
                     val_fraction: float = 0.15, seed: int = 0, base_filters: int = 16, depth: int = 4,
                     out_path: PathLike | None = None, augment: bool = True, learning_rate: float = 1e-3,
                     patience: int | None = None, data_name: str = "", verbose: int = 0) -> LungTrainResult:
    """Train a U-Net (BCE + soft Dice, Adam with cosine decay) keeping the epoch with the best held-out Dice.

    Held-out images come from a seeded permutation (one image per patient assumed, as in Shenzhen). With
    out_path the best model is checkpointed there during training and saved with its sidecar at the end.
    """
    if images.ndim != 4 or images.shape[1:3] != masks.shape[1:] or images.shape[1] != images.shape[2]:
        raise ValueError(f"need images [N,S,S,1] and masks [N,S,S], got {images.shape} and {masks.shape}")
    keras.utils.set_random_seed(seed)
    train_idx, val_idx = split_indices(len(images), val_fraction, seed)
    size = images.shape[1]
    model = build_unet(size, base_filters=base_filters, depth=depth)
    steps = epochs * -(-len(train_idx) // batch_size)
    schedule = keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=max(1, steps), alpha=0.05)
    model.compile(optimizer=keras.optimizers.Adam(schedule), loss=bce_soft_dice_loss,
                  metrics=[keras.metrics.MeanMetricWrapper(dice_metric, name="dice")])
    callbacks = [keras.callbacks.EarlyStopping("val_dice", mode="max", patience=patience or epochs,
                                               restore_best_weights=True)]
    if out_path is not None:
        Path(out_path).parent.mkdir(parents=True, exist_ok=True)
        callbacks.append(keras.callbacks.ModelCheckpoint(str(out_path), monitor="val_dice", mode="max",
                                                         save_best_only=True))
    fit = model.fit(_dataset(images[train_idx], masks[train_idx], batch_size, shuffle_seed=seed, augment=augment),
                    validation_data=_dataset(images[val_idx], masks[val_idx], batch_size, shuffle_seed=None,
                                             augment=False),
                    epochs=epochs, callbacks=callbacks, shuffle=False, verbose=verbose)
    scores = dice_per_image(predict_lung_masks(model, images[val_idx], batch_size=batch_size), masks[val_idx])
    result = LungTrainResult(model, float(scores.mean()), scores, len(train_idx), len(val_idx),
                             {key: [float(v) for v in values] for key, values in fit.history.items()}, val_idx)
    if out_path is not None:
        save_lung_model(result, out_path, data_name=data_name)
    return result


# ------------------------------------------------------------------------------------ saving, predicting

def sidecar_path(model_path: PathLike) -> Path:
    """The JSON sidecar beside a saved model: unet256.keras -> unet256.json."""
    return Path(model_path).with_suffix(".json")


def save_lung_model(result: LungTrainResult, path: PathLike, *, data_name: str = "") -> Path:
    """Save result.model as .keras plus its JSON sidecar; returns the model path."""
    path = Path(path)
    if path.suffix != ".keras":
        raise ValueError(f"lung models are saved as .keras, got {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    result.model.save(path)
    val_dice = result.history.get("val_dice", [])
    info = {"size": int(result.model.input_shape[1]), "dice_mean": result.dice_mean,
            "dice_median": float(np.median(result.dice_per_image)), "dice_min": float(result.dice_per_image.min()),
            "n_train": result.n_train, "n_val": result.n_val, "data": data_name,
            "epochs_run": len(val_dice), "best_epoch": int(np.argmax(val_dice)) + 1 if val_dice else None,
            "date": datetime.datetime.now().isoformat(timespec="seconds")}
    sidecar_path(path).write_text(json.dumps(info, indent=2) + "\n")
    return path


def load_lung_model(path: PathLike) -> keras.Model:
    """Load a U-Net saved by train_lung_model / save_lung_model (inference only: not compiled)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no lung model at {path}; train one with "
                                f"`python tools/train_lungs.py --out {path}`")
    return keras.saving.load_model(path, compile=False)


def keep_largest_components(mask: np.ndarray, count: int = 2) -> np.ndarray:
    """The `count` largest 8-connected components of a boolean mask (two lungs; drops stray specks)."""
    n_labels, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if n_labels - 1 <= count:
        return mask.astype(bool)
    areas = stats[1:, cv2.CC_STAT_AREA]
    keep = 1 + np.argsort(areas, kind="stable")[::-1][:count]
    return np.isin(labels, keep)


def predict_lung_masks(model: keras.Model, images: np.ndarray, *, threshold: float = 0.5, batch_size: int = 16,
                       keep_components: int | None = None) -> np.ndarray:
    """Boolean lung masks [N,H,W] for images [N,H,W,1] in [0,1], resized to the model's size and back.

    Probabilities (not masks) are resized back, with linear interpolation, so edges stay sub-pixel.
    keep_components=2 keeps the two largest connected components of each mask.
    """
    images = np.asarray(images, np.float32)
    if images.ndim == 3:
        images = images[..., None]
    n, height, width = images.shape[:3]
    if n == 0:
        return np.zeros((0, height, width), bool)
    model_size = int(model.input_shape[1])
    same_size = (height, width) == (model_size, model_size)
    resized = images[..., 0]
    if not same_size:
        interpolation = cv2.INTER_AREA if model_size < max(height, width) else cv2.INTER_LINEAR
        resized = np.stack([cv2.resize(image, (model_size, model_size), interpolation=interpolation)
                            for image in resized])
    probability = model.predict(resized[..., None], batch_size=batch_size, verbose=0)[..., 0]
    if not same_size:
        probability = np.stack([cv2.resize(p, (width, height), interpolation=cv2.INTER_LINEAR) for p in probability])
    masks = probability > threshold
    if keep_components:
        masks = np.stack([keep_largest_components(mask, keep_components) for mask in masks])
    return masks
