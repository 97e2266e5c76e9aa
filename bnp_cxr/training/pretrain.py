"""Self-supervised pretraining of the backbone on the run's own train and val radiographs (SimCLR).

Chen et al., "A Simple Framework for Contrastive Learning of Visual Representations", ICML 2020: two random views
of each image (crop, exposure, contrast, blur, noise) pass through the backbone and a projection head, and the
NT-Xent loss pulls a pair's embeddings together against the batch's other images. Sowrirajan et al., "MoCo
Pretraining Improves Representation and Transferability of Chest X-ray Models", MIDL 2021, found such
pretraining helps most where labels are few. No labels are read and the test split never is: the encoder sees
the images the supervised run trains and validates on, plus, with TrainConfig.pretrain_extra, every image of other
records folders (an archive's films without lab results: tools/make_tfrecords.py --unlabelled) except those of
this run's test patients. Views keep the chest's left and right (no flips), as the training augmentation does.

The encoder (the backbone's layers, by name) is saved as `RunDir.encoder` with the key it was made under; a run
or a resumed run with the same key reuses it, and `--weights` loads it into the supervised model by layer name.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from bnp_cxr.files import atomic_path, write_json
from bnp_cxr.training.config import TrainConfig
from bnp_cxr.records.schema import has_shards
from bnp_cxr.workspace import SPLITS, RunDir

PRETRAIN_SPLITS = ("train", "val")  # never the test split


@dataclass(frozen=True)
class PretrainConfig:
    """SimCLR settings: views, projection head, optimisation (Adam, cosine decay to 0 over all steps; the number of
    epochs is the run's TrainConfig.pretrain_epochs)."""

    batch_size: int = 128  # images per step (2x views); smaller sets use all their images in one batch
    temperature: float = TrainConfig.pretrain_temperature  # (run_settings puts the run's in)
    lr: float = 2e-3
    # a random crop of at least this fraction of the image, resized back (run_settings puts the run's in)
    min_crop_area: float = TrainConfig.pretrain_min_crop
    view_res: str = TrainConfig.pretrain_view_res  # PRETRAIN_VIEW_RESOLUTIONS (run_settings puts the run's in)
    max_log_aspect: float = math.log(4 / 3)
    gamma_range: tuple[float, float] = (0.6, 1.6)
    contrast_range: tuple[float, float] = (0.6, 1.4)
    max_brightness: float = 0.15
    blur_probability: float = 0.4  # a 3x area-averaged copy resized back
    noise_std: float = 0.02  # per pixel of the image's own size (scaled to views made smaller, as averaging would)
    projection: tuple[int, int] = (256, 128)  # the head's hidden and output widths (discarded after pretraining)


PRETRAIN = PretrainConfig()


def pretrain_splits(config: TrainConfig) -> list[str]:
    """The splits of PRETRAIN_SPLITS a resolved config's records hold at its size (train always: its absence is an
    error when read; val only where made, as records for a run that keeps its last epoch may have none)."""
    return [split for split in PRETRAIN_SPLITS
            if split == "train" or has_shards(config.records_dir, split, config.size)]


def unlabelled_images(config: TrainConfig) -> np.ndarray:
    """The images of a resolved config's pretrain_splits, standardised as the run's model reads them (float16
    [N, size, size, 1]; read once: CLAHE per image and epoch would cost more than the network)."""
    return np.concatenate([_read_images(config, config.records_dir, split)[0] for split in pretrain_splits(config)])


def _read_images(config: TrainConfig, records_dir: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images float16 [N, size, size, 1] standardised as the run's model reads them, patient IDs [N]) of a split."""
    from bnp_cxr.records.reader import make_dataset

    images, patients = [], []
    for batch, _, metadata in make_dataset(records_dir, split, config.size, batch_size=64, deterministic=True,
                                           standardize=config.standardize, with_metadata=True):
        images.append(batch.numpy().astype(np.float16))
        patients.append(metadata["patient_id"].numpy())
    return np.concatenate(images), np.concatenate(patients)


def extra_images(config: TrainConfig) -> tuple[np.ndarray, list[dict]]:
    """The images of config.pretrain_extra's records folders (every split at config.size) without any of this
    run's test patients (matched by pseudonymous patient ID), and per folder what was read and left out."""
    from bnp_cxr.records.reader import list_shards, record_patients

    own = Path(config.records_dir).resolve()
    try:
        test_patients = record_patients(config.records_dir, "test", config.size)
    except FileNotFoundError:  # a run without a test split has no patients to keep out
        test_patients = []
    kept, counts = [], []
    for folder in config.pretrain_extra:
        if Path(folder).resolve() == own:
            raise ValueError(f"pretrain_extra {folder} is this run's own records folder: its test split would join "
                             "the pretraining (the train and val images are in it already)")
        splits = [split for split in SPLITS if has_shards(folder, split, config.size)]
        if not splits:
            list_shards(folder, "train", config.size)  # raises FileNotFoundError naming the folder and the glob
        count = {"records_dir": str(folder), "images": 0, "left_out_test_patients": 0}
        for split in splits:
            images, patients = _read_images(config, folder, split)
            mask = ~np.isin(patients, np.array(test_patients, dtype=object))
            kept.append(images[mask])
            count["images"] += int(mask.sum())
            count["left_out_test_patients"] += int((~mask).sum())
        counts.append(count)
    size = config.size
    return (np.concatenate(kept) if kept else np.zeros((0, size, size, 1), np.float16)), counts


def pretraining_images(config: TrainConfig, log: Callable[[str], None] = print) -> tuple[np.ndarray, list[dict]]:
    """The run's train and val images and those of its pretrain_extra folders (extra_images' counts)."""
    images = unlabelled_images(config)
    if not config.pretrain_extra:
        return images, []
    more, extra = extra_images(config)
    log(f"Pretraining on {len(images)} train / val images and {len(more)} from {len(extra)} other records folders "
        f"({sum(count['left_out_test_patients'] for count in extra)} images of this run's test patients left out)")
    return np.concatenate([images, more]), extra


def contrastive_view(images, seed, settings: PretrainConfig = PRETRAIN, view_px: int | None = None):
    """One random view [B, view_px, view_px, 1] in [0, 1] of each image [B, H, W, 1]: crop and resize, gamma,
    contrast, brightness, blur, noise (stateless: the same seed gives the same views). view_px: the images' own size
    when None; smaller views get the noise an area average to view_px would leave of it."""
    import tensorflow as tf

    batch, size = tf.shape(images)[0], view_px or images.shape[1]
    seeds = tf.random.experimental.stateless_split(seed, 9)

    def uniform(index, low, high, shape=None):
        return tf.random.stateless_uniform(shape or [batch], seeds[index], low, high)

    area = uniform(0, settings.min_crop_area, 1.0)
    aspect = tf.exp(uniform(1, -settings.max_log_aspect, settings.max_log_aspect))
    height, width = tf.minimum(tf.sqrt(area / aspect), 1.0), tf.minimum(tf.sqrt(area * aspect), 1.0)
    top, left = uniform(2, 0.0, 1.0) * (1 - height), uniform(3, 0.0, 1.0) * (1 - width)
    boxes = tf.stack([top, left, top + height, left + width], axis=1)
    x = tf.image.crop_and_resize(images, boxes, tf.range(batch), [size, size])
    pixel = [batch, 1, 1, 1]
    gamma = tf.exp(uniform(4, *np.log(settings.gamma_range), pixel))
    x = tf.clip_by_value(x, 1e-4, 1.0) ** gamma
    mean = tf.reduce_mean(x, axis=[1, 2, 3], keepdims=True)
    x = (x - mean) * uniform(5, *settings.contrast_range, pixel) + mean
    x += uniform(6, -settings.max_brightness, settings.max_brightness, pixel)
    blurred = tf.image.resize(tf.image.resize(x, [size // 3, size // 3], method="area"), [size, size])
    blur = tf.cast(uniform(7, 0.0, 1.0, pixel) < settings.blur_probability, x.dtype)
    x = blur * blurred + (1 - blur) * x
    # i.i.d. noise averaged over k x k pixels keeps 1/k of its standard deviation
    x += tf.random.stateless_normal(tf.shape(x), seeds[8]) * (settings.noise_std * size / images.shape[1])
    return tf.clip_by_value(x, 0.0, 1.0)


def nt_xent(embeddings, temperature: float):
    """(NT-Xent loss, pair accuracy) of embeddings [2B, D] whose rows i and i + B are the two views of image i."""
    import tensorflow as tf

    z = tf.math.l2_normalize(embeddings, axis=1)
    n = tf.shape(z)[0]
    half = n // 2
    # Each view's own similarity is removed, so the softmax runs over the other 2B - 1 views.
    logits = tf.matmul(z, z, transpose_b=True) / temperature - tf.eye(n) * 1e9
    partners = tf.concat([tf.range(half, n), tf.range(0, half)], axis=0)
    loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(partners, logits))
    accuracy = tf.reduce_mean(tf.cast(tf.equal(tf.argmax(logits, axis=1, output_type=tf.int32), partners), tf.float32))
    return loss, accuracy


def projection_head(settings: PretrainConfig = PRETRAIN):
    """SimCLR's projection head on the pooled features (discarded after pretraining): Dense-ReLU, Dense."""
    import keras

    return keras.Sequential([keras.layers.Dense(settings.projection[0], activation="relu"),
                             keras.layers.Dense(settings.projection[1])], name="projection")


def simclr_step(encoder, head, optimizer, data, settings: PretrainConfig = PRETRAIN):
    """One SimCLR step as a tf.function (image indices into `data` [N, H, W, 1], stateless seed [2]) -> (NT-Xent
    loss, pair accuracy): two views of each chosen image at the encoder's input size, both through encoder and head,
    one optimiser update."""
    import tensorflow as tf

    view_px = encoder.input.shape[1]

    @tf.function
    def step(indices, seed):
        pair = tf.random.experimental.stateless_split(seed, 2)
        chosen = tf.cast(tf.gather(data, indices), tf.float32)
        views = tf.concat([contrastive_view(chosen, pair[0], settings, view_px),
                           contrastive_view(chosen, pair[1], settings, view_px)], axis=0)
        with tf.GradientTape() as tape:
            loss, accuracy = nt_xent(head(encoder(views, training=True), training=True), settings.temperature)
        variables = encoder.trainable_variables + head.trainable_variables
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss, accuracy

    return step


def view_encoder(model, settings: PretrainConfig = PRETRAIN):
    """The part of a supervised model the views go through: its input to the global pool, or with view_res "model"
    from its downsampling layer's output on (the same layers, so training one trains the other)."""
    import keras

    from bnp_cxr.models import DOWNSAMPLE_NAME, POOL_NAME

    names = {layer.name for layer in model.layers}
    start = model.get_layer(DOWNSAMPLE_NAME).output if settings.view_res == "model" and DOWNSAMPLE_NAME in names \
        else model.input
    return keras.Model(start, model.get_layer(POOL_NAME).output, name="view_encoder")


def pretrain_encoder(config: TrainConfig, out: Path, settings: PretrainConfig = PRETRAIN,
                     log: Callable[[str], None] = print) -> dict:
    """SimCLR-pretrain the resolved config's backbone on its records' train and val images; save the encoder
    (input to global pool, the supervised model's layer names) as `out`, with the run's own choices of the settings
    (run_settings); returns the last epoch's loss and accuracy."""
    import keras
    import tensorflow as tf

    from bnp_cxr.models import POOL_NAME, build_model

    settings = run_settings(config, settings)
    images, extra = pretraining_images(config, log)
    n = len(images)
    batch = min(settings.batch_size, n)
    if batch < 2:
        raise ValueError(f"pretraining needs at least 2 train / val images in {config.records_dir}, found {n}")
    keras.utils.set_random_seed(config.seed)
    model = build_model(config.backbone, config.size, dropout=config.dropout, model_px=config.model_px,
                        widths=config.widths)
    encoder = keras.Model(model.input, model.get_layer(POOL_NAME).output, name="pretrained_encoder")
    head = projection_head(settings)
    steps_per_epoch = n // batch
    optimizer = keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(
        settings.lr, decay_steps=config.pretrain_epochs * steps_per_epoch))
    step = simclr_step(view_encoder(model, settings), head, optimizer, tf.constant(images), settings)
    order = np.random.default_rng(config.seed)
    started = time.perf_counter()
    for epoch in range(config.pretrain_epochs):
        permutation = order.permutation(n)
        totals = np.zeros(2)
        for index in range(steps_per_epoch):
            seed = tf.constant([config.seed, epoch * steps_per_epoch + index], tf.int64)
            totals += [float(value) for value in step(tf.constant(permutation[index * batch:(index + 1) * batch]),
                                                      seed)]
        loss, accuracy = totals / steps_per_epoch
        if epoch % 10 == 9 or epoch == config.pretrain_epochs - 1:
            log(f"Pretraining epoch {epoch + 1}/{config.pretrain_epochs}: NT-Xent {loss:.3f}, "
                f"pair accuracy {accuracy:.3f} ({(time.perf_counter() - started) / 60:.1f} min)")
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out, suffix=".keras") as temp:
        encoder.save(temp)
    return {"images": n, "extra": extra, "steps": config.pretrain_epochs * steps_per_epoch,
            "loss": round(float(loss), 4), "pair_accuracy": round(float(accuracy), 4),
            "minutes": round((time.perf_counter() - started) / 60, 2)}


def pretrain_key(config: TrainConfig, data: dict, settings: PretrainConfig = PRETRAIN) -> dict:
    """What an encoder depends on: the records' data, the architecture, the standardisation, the seed, the settings
    (with the run's own choices of them, run_settings)."""
    from bnp_cxr.records.reader import data_fingerprint

    fields = ("size", "backbone", "model_px", "widths", "standardize", "seed", "pretrain", "pretrain_epochs")
    # Only a run with extra folders gets the field, so encoders made before the option keep their keys.
    extra = {"extra_sha256": [data_fingerprint(folder, config.size)["sha256"] for folder in config.pretrain_extra]}
    # Likewise the views' resolution: only "model" views, the later option, are named in the settings.
    named = {key: value for key, value in dataclasses.asdict(run_settings(config, settings)).items()
             if key != "view_res" or value != "input"}
    return json.loads(json.dumps({"data_sha256": data["sha256"], **{name: getattr(config, name) for name in fields},
                                  **(extra if config.pretrain_extra else {}), "settings": named}))


def run_settings(config: TrainConfig, settings: PretrainConfig = PRETRAIN) -> PretrainConfig:
    """The settings with the run's own choices of them put in (its smallest crop, views' resolution, temperature)."""
    return dataclasses.replace(settings, min_crop_area=config.pretrain_min_crop, view_res=config.pretrain_view_res,
                               temperature=config.pretrain_temperature)


def ensure_encoder(config: TrainConfig, data: dict, *, workers: int = 1, settings: PretrainConfig = PRETRAIN,
                   log: Callable[[str], None] = print) -> None:
    """Make the pretrained encoder a resolved config's weights point to when this run owns it (its own
    RunDir.encoder), reusing one made under the same key; a member reads its ensemble's, which must exist."""
    if config.pretrain == "none":
        return
    weights, own = Path(os.path.abspath(config.weights)), Path(os.path.abspath(RunDir(config.run_path).encoder))
    if weights != own:
        if not weights.is_file():
            raise FileNotFoundError(f"pretrained encoder {weights} not found (pretrain {config.pretrain})")
        return
    if workers > 1:
        raise ValueError(f"pretraining (--pretrain {config.pretrain}) runs on one machine, not {workers} workers: "
                         f"run it there once and pass its {RunDir.PRETRAIN}/{RunDir.ENCODER} as --weights, or "
                         "--pretrain none")
    key = pretrain_key(config, data, settings)
    record = Path(os.path.abspath(RunDir(config.run_path).encoder_key))
    if own.is_file() and record.is_file() and json.loads(record.read_text()).get("key") == key:
        log(f"Pretrained encoder reused: {own}")
        return
    log(f"Pretraining the {config.backbone} on the {' and '.join(pretrain_splits(config))} images without their labels "
        f"({config.pretrain}, {config.pretrain_epochs} epochs) into {own}")
    summary = pretrain_encoder(config, own, settings, log)
    write_json(record, {"key": key, **summary})
