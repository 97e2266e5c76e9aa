"""The train and val datasets of a run: full train batches, val batches every replica can split, sharding."""

from __future__ import annotations

import math

from bnp_cxr.training.config import TrainConfig


def val_batching(n_val: int, batch_size: int, replicas: int) -> tuple[int, int]:
    """(val batch size, val images left out each epoch): every replica must get a non-empty batch.

    One replica: batch_size, the last batch partial. Several: a partial batch is split by the
    per-replica size, leaving some replicas an empty batch, which Keras cannot run (BatchNorm shape
    error). So the val batch is the largest multiple of `replicas` <= batch_size whose remainder is the
    unavoidable n_val mod replicas, and that remainder (< replicas images) is left out.
    """
    if replicas == 1:
        return batch_size, 0
    candidates = range(replicas * max(1, batch_size // replicas), 0, -replicas)
    batch = next(size for size in candidates if n_val % size == n_val % replicas)
    return batch, n_val % replicas


def mixup_batch(images, targets, seed, alpha: float):
    """Mixup (Zhang et al., ICLR 2018): each image blended with a random other of its batch, and its targets likewise.

    Each image draws its own weight lambda ~ Beta(alpha, alpha) (two Gamma draws) from the stateless `seed`
    ([2] int64), so a seeded run mixes the same pairs again. A lab missing in either image of a pair (NaN)
    stays NaN in the blend and is masked by the loss.
    """
    import tensorflow as tf

    batch = tf.shape(images)[0]
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 3)
    shape = tf.reshape(batch, [1])
    first = tf.random.stateless_gamma(shape, seeds[0], alpha=alpha)
    second = tf.random.stateless_gamma(shape, seeds[1], alpha=alpha)
    weight = first / tf.maximum(first + second, 1e-12)  # both Gammas can underflow to 0 at a small alpha
    partner = tf.random.experimental.stateless_shuffle(tf.range(batch), seeds[2])
    image_weight = tf.cast(tf.reshape(weight, [-1, 1, 1, 1]), images.dtype)
    target_weight = tf.cast(tf.reshape(weight, [-1, 1]), targets.dtype)
    mixed_images = image_weight * images + (1 - image_weight) * tf.gather(images, partner)
    mixed_targets = target_weight * targets + (1 - target_weight) * tf.gather(targets, partner)
    return mixed_images, mixed_targets


def fit_splits(config: TrainConfig) -> tuple[str, ...]:
    """The record splits a run fits on: train, and val too with train_on_val."""
    return ("train", "val") if config.train_on_val else ("train",)


def fit_image_count(config: TrainConfig, fingerprint: dict) -> int:
    """How many images a run fits on per epoch: its fit_splits' counts in the records' fingerprint."""
    return sum(fingerprint["images"][split] for split in fit_splits(config))


def check_val_split(config: TrainConfig, fingerprint: dict) -> None:
    """A ValueError when the run needs val records its records folder lacks (keep "best" or train_on_val).

    With keep "last" (the CPU default) val only monitors the training, so records made with no val split
    (make_tfrecords --split-fractions 1 0 0: every film fits) train without it.
    """
    if fingerprint["images"]["val"]:
        return
    where = f"no val records at {config.size} px in {config.records_dir}"
    if config.keep == "best":
        raise ValueError(f"{where}: keep 'best' picks the epoch of lowest val loss; make records with a val split "
                         "(make_tfrecords --split-fractions, e.g. 0.875 0.125 0) or pass --keep last")
    if config.train_on_val:
        raise ValueError(f"{where}: --train-on-val has no val images to fit; leave it off")


def make_datasets(config: TrainConfig, fingerprint: dict, replicas: int, n_workers: int, epochs: int):
    """(train dataset repeated for `epochs` epochs, val dataset or None where the records have no val split, train
    steps per epoch, val images left out each epoch)."""
    import tensorflow as tf

    from bnp_cxr.records.augment import SITE_AUGMENT, AugmentConfig
    from bnp_cxr.records.reader import make_dataset

    n_train, n_val = fit_image_count(config, fingerprint), fingerprint["images"]["val"]
    # Full batches only (when there are enough images): BatchNorm on a 1-image remainder is noise.
    drop = n_train >= config.batch_size
    augment = (SITE_AUGMENT if config.site_augment else AugmentConfig()) if config.augment else None
    findings = bool(config.finding_loss_weight)  # targets [labs, findings] for training.findings' heads
    train = make_dataset(config.records_dir, fit_splits(config), config.size, batch_size=config.batch_size,
                         training=True, augment=augment, shuffle_buffer=config.shuffle_buffer, cache=config.cache,
                         seed=config.seed, drop_remainder=drop, standardize=config.standardize,
                         finding_targets=findings)
    if config.mixup:  # after the augmentation, on whole batches; its seeds from a stream of their own
        seeds = tf.data.Dataset.random(seed=config.seed + 2, rerandomize_each_iteration=True).batch(2)
        train = tf.data.Dataset.zip((train, seeds)).map(
            lambda batch, seed: mixup_batch(batch[0], batch[1], seed, config.mixup),
            num_parallel_calls=tf.data.AUTOTUNE)
    val, left_out = None, 0
    if n_val:
        val_batch, left_out = val_batching(n_val, config.batch_size, replicas)
        val = make_dataset(config.records_dir, "val", config.size, batch_size=val_batch, cache=config.cache,
                           deterministic=True, drop_remainder=left_out > 0, standardize=config.standardize,
                           finding_targets=findings)
        # A known length: Keras then reads the val set whole each epoch without probing past its end.
        val = val.apply(tf.data.experimental.assert_cardinality(n_val // val_batch if left_out else
                                                                math.ceil(n_val / val_batch)))
    if n_workers > 1:
        # Batches are global: the strategy splits each into per-replica batches (tf.distribute input docs).
        # Sharding by DATA: every worker reads every record and keeps its share of each batch. FILE sharding
        # (each worker reads only its files) is refused by tf.data here: the augmentation's seed stream is a
        # source that is not a file, and a split with fewer shard files than workers cannot be split by file.
        # A deterministic order makes the workers' shares an exact partition of each epoch.
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        options.deterministic = True
        train, val = train.with_options(options), val.with_options(options) if val is not None else None
    steps = n_train // config.batch_size if drop else 1
    # Repeated with explicit steps: Keras then never probes past the end of an epoch of unknown length
    # (which costs an optimizer step count per epoch) and every worker runs the same number of steps.
    # Exactly the epochs to run, not forever: an endless iterator is deleted at the end of fit() with
    # standardisation calls (Python, under the GIL) in flight, which stalled the process for ~30 s.
    return train.repeat(epochs), val, steps, left_out
