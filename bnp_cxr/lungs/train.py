"""Training the lung U-Net on prepared pairs, and saving / loading it as `.keras` plus a JSON sidecar.

The sidecar (`<name>.json`) records the size, held-out Dice, counts, data name and date.
"""

from __future__ import annotations

import datetime
import json
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from bnp_cxr.lungs.data import PathLike, split_indices
from bnp_cxr.lungs.predict import predict_lung_masks
from bnp_cxr.lungs.unet import bce_soft_dice_loss, build_unet, dice_metric, dice_per_image
from bnp_cxr.records.augment import AugmentConfig, augment_batch

# The records' ranges (rotation +-5 deg, scale +-5 %, shift +-4 %, brightness +-0.05, contrast x0.9-1.1, noise
# sd 0.01, no flip): the U-Net trains on the same variation as the BNP model it serves.
LUNG_AUGMENT = AugmentConfig()


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


def _dataset(images: np.ndarray, masks: np.ndarray, batch_size: int, *, shuffle_seed: int | None,
             augment: bool) -> tf.data.Dataset:
    """Batches of (image [B,S,S,1], mask float32 [B,S,S,1]); augmented with seeds drawn from shuffle_seed."""
    data = tf.data.Dataset.from_tensor_slices((images, masks[..., None].astype(np.float32)))
    if shuffle_seed is not None:
        data = data.shuffle(len(images), seed=shuffle_seed, reshuffle_each_iteration=True)
    data = data.batch(batch_size)
    if augment:
        seeds = tf.data.Dataset.random(seed=shuffle_seed, rerandomize_each_iteration=True).batch(2)
        data = tf.data.Dataset.zip((data, seeds)).map(
            lambda batch, seed: augment_batch(batch[0], seed, LUNG_AUGMENT, masks=batch[1]),
            num_parallel_calls=tf.data.AUTOTUNE)
    return data.prefetch(tf.data.AUTOTUNE)


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

