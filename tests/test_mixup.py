"""Mixup (training.inputs.mixup_batch, --mixup): blended images and labs, the option's checks, a run with it."""

import json
import math

import numpy as np
import pytest
import tensorflow as tf

from archives import heart_records
from bnp_cxr.training import make_config, train
from bnp_cxr.training.inputs import mixup_batch
from bnp_cxr.training.loop import HISTORY_FILE

NAN = math.nan


def constant_batch(values: list[float]) -> tuple[tf.Tensor, tf.Tensor]:
    """Images whose pixels all equal their value, targets [value, 2 * value]: a blend shows in both alike."""
    values = np.asarray(values, np.float32)
    images = np.broadcast_to(values[:, None, None, None], (len(values), 4, 4, 1)).copy()
    return tf.constant(images), tf.constant(np.stack([values, 2 * values], axis=1))


@pytest.mark.parametrize("alpha", [0.01, 0.2, 1.0, 4.0])
def test_mixup_blends_each_image_and_its_labs_with_one_weight(alpha):
    images, targets = constant_batch([0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0])
    mixed_images, mixed_targets = (t.numpy() for t in mixup_batch(images, targets, tf.constant([3, 4]), alpha))
    assert np.isfinite(mixed_images).all() and np.isfinite(mixed_targets).all()
    pixel = mixed_images[:, 0, 0, 0]
    assert np.allclose(mixed_images, pixel[:, None, None, None])  # one weight per image, over all its pixels
    assert np.allclose(mixed_targets[:, 0], pixel, atol=1e-5) and np.allclose(mixed_targets[:, 1], 2 * pixel, atol=1e-5)
    assert pixel.min() >= 0.0 and pixel.max() <= 7.0
    if alpha >= 0.2:  # Beta(0.01, 0.01) weights sit at 0 or 1: the batch may come back merely reordered
        assert not np.allclose(pixel, np.round(pixel))  # some images are blends of two


def test_mixup_repeats_with_its_seed_and_changes_with_another():
    images, targets = constant_batch([0.0, 1.0, 2.0, 3.0, 4.0, 5.0])
    first = mixup_batch(images, targets, tf.constant([7, 8]), 0.4)[1].numpy()
    again = mixup_batch(images, targets, tf.constant([7, 8]), 0.4)[1].numpy()
    other = mixup_batch(images, targets, tf.constant([9, 8]), 0.4)[1].numpy()
    assert np.array_equal(first, again) and not np.array_equal(first, other)


def test_a_missing_lab_stays_missing_only_where_it_is_blended_in():
    images = tf.zeros((6, 4, 4, 1))
    targets = tf.constant([[1.0, NAN], [2.0, 3.0], [2.5, 3.5], [1.5, 2.5], [2.2, 3.2], [1.8, 2.8]])
    mixed = mixup_batch(images, targets, tf.constant([1, 2]), 1.0)[1].numpy()
    assert np.isfinite(mixed[:, 0]).all()  # the BNP column is known everywhere
    # the BNPP column is NaN in the blends that use image 0: image 0 itself and the image paired with it
    assert np.isnan(mixed[0, 1]) and 1 <= np.isnan(mixed[:, 1]).sum() <= 2


@pytest.mark.parametrize("options, message", [
    ({"mixup": -0.2}, "mixup must be a finite number >= 0"), ({"mixup": math.inf}, "mixup must be a finite"),
    ({"mixup": 0.2, "finding_loss_weight": 1.0}, "mixup blends the log10 labs only"),
])
def test_bad_mixup_options_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        make_config(options)


def test_a_run_trains_on_mixup_batches_and_records_the_option(tmp_path, monkeypatch):
    from bnp_cxr.cli.train import build_parser
    from bnp_cxr.training import inputs
    from bnp_cxr.training.arguments import training_options

    (tmp_path / "archive").mkdir()
    records = heart_records(tmp_path / "archive", tmp_path / "records", {"train": 16, "val": 8, "test": 4}, (64,),
                            severities=lambda rng, count: rng.random(count), seed=2,
                            bnp_on=lambda index: index % 2 == 0, bnpp_on=lambda index: True)
    alphas = []

    def spy(images, targets, seed, alpha):
        alphas.append(alpha)
        return mixup_batch(images, targets, seed, alpha)

    monkeypatch.setattr(inputs, "mixup_batch", spy)
    args = build_parser().parse_args(["--records", str(records), "--run-dir", str(tmp_path / "run"), "--size", "64",
                                      "--backbone", "small_cnn", "--epochs", "1", "--batch-size", "8",
                                      "--mixed-precision", "off", "--members", "1", "--pretrain", "none",
                                      "--model-px", "32", "--widths", "8", "16", "--mixup", "0.4"])
    result = train(make_config(training_options(args)), verbose=0, log=lambda _: None)
    assert alphas == [0.4]  # traced once into the train dataset's map
    assert json.loads((result.run_dir / "config.json").read_text())["mixup"] == 0.4
    history = (result.run_dir / HISTORY_FILE).read_text().splitlines()
    assert len(history) == 2 and "nan" not in history[1].lower()
