"""Records: letterbox geometry, the sharded writer (rejects, summary, resume, workers) and the reader."""

import csv
import dataclasses
import json
import math

import cv2
import numpy as np
import pytest

from bnp_cxr.data.manifest import load_manifest
from bnp_cxr.records import prepare
from bnp_cxr.records.schema import SHARD_PATTERN
from bnp_cxr.records.writer import IngestConfig, write_records

SIZES = (64, 128)


@pytest.mark.parametrize("height, width, size, expected", [
    (100, 100, 64, (64, 64, 0, 0)),
    (200, 100, 64, (64, 32, 0, 16)),
    (100, 200, 64, (32, 64, 16, 0)),
    (1536, 1280, 256, (256, 213, 0, 21)),
    (3, 1000, 64, (1, 64, 31, 0)),
])
def test_letterbox_geometry(height, width, size, expected):
    geometry = prepare.letterbox_geometry(height, width, size)
    assert (geometry.scaled_height, geometry.scaled_width, geometry.top, geometry.left) == expected


def test_mask_stack_half_area_rule_and_bits():
    lung = np.zeros((128, 128), np.uint8)
    lung[:, :64] = 1  # left half set
    lung[0, 127] = 1  # a single pixel: 1/4 of a target pixel, dropped
    components = np.zeros((128, 128), np.uint8)
    components[:64] |= 4  # top half: bit 2
    components[:, 66:] |= 16  # right part: bit 4
    components[100, 10] |= 1  # one pixel of bit 0: vanishes at half size
    lung_out, bits_out = prepare.MaskStack(lung, components).at(prepare.letterbox_geometry(128, 128, 64))
    assert lung_out[:, :32].all() and not lung_out[:, 32:].any()
    assert ((bits_out & 4) > 0)[:32].all() and not (bits_out & 4)[32:].any()
    assert ((bits_out & 16) > 0)[:, 33:].all() and not (bits_out & 16)[:, :33].any()
    assert not (bits_out & 1).any()
    assert prepare.MaskStack(None, None).at(prepare.letterbox_geometry(128, 128, 64)) == (None, None)
    _, empty_bits = prepare.MaskStack(None, np.zeros((128, 128), np.uint8)).at(prepare.letterbox_geometry(128, 128, 64))
    assert empty_bits.shape == (64, 64) and not empty_bits.any()


@pytest.mark.parametrize("planes", [1, 4, 5, 9])
def test_mask_stack_any_number_of_planes_at_non_integer_scale(planes):
    """Every plane at 1536 x 1280 -> 256 px (scale 6) and 100 x 90 -> 64 px (non-integer) matches a lone resize."""
    rng = np.random.default_rng(planes)
    for shape, size in (((1536, 1280), 256), ((100, 90), 64)):
        lung = (rng.random(shape) < 0.5).astype(np.uint8)
        bits = np.zeros(shape, np.uint8)
        for bit in range(planes - 1):
            bits |= (rng.random(shape) < 0.5).astype(np.uint8) << bit
        geometry = prepare.letterbox_geometry(*shape, size)
        lung_out, bits_out = prepare.MaskStack(lung, bits).at(geometry)
        alone = prepare.letterbox(lung * 255, geometry) >= 128
        np.testing.assert_array_equal(lung_out, alone)
        for bit in range(planes - 1):
            plane = prepare.letterbox(((bits >> bit) & 1) * np.uint8(255), geometry) >= 128
            np.testing.assert_array_equal((bits_out >> bit) & 1, plane)


def synthetic_chest(height, width, seed):
    """A 16-bit 'radiograph': bright body, two dark lungs; returns (image, lung mask)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width] / np.array([height, width])[:, None, None]
    image = 30000 + 8000 * yy + rng.normal(0, 300, (height, width))
    lungs = (((xx - 0.3) / 0.15) ** 2 + ((yy - 0.5) / 0.3) ** 2 < 1) | (((xx - 0.7) / 0.15) ** 2 + ((yy - 0.5) / 0.3) ** 2 < 1)
    image[lungs] -= 15000
    return np.clip(image, 0, 65535).astype(np.uint16), lungs.astype(np.uint8) * 255


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """A folder of PNG radiographs + masks + a manifest with good and bad rows."""
    root = tmp_path_factory.mktemp("archive")
    (root / "img").mkdir()
    lines = ["patient_id,image_path,study_datetime,bnp,bnpp,view,lung_mask_path"]
    shapes = [(160, 130), (130, 160), (150, 150)]
    for i in range(14):
        image, mask = synthetic_chest(*shapes[i % 3], seed=i)
        cv2.imwrite(str(root / "img" / f"im{i}.png"), image)
        cv2.imwrite(str(root / "img" / f"im{i}_mask.png"), mask)
        bnpp = "" if i % 4 == 0 else f"{50 * (i + 1)}"
        bnp = f"{20 + 10 * i}" if i % 4 == 0 else ""
        lines.append(f"PAT{i % 9},img/im{i}.png,2020-01-{i + 1:02d},{bnp},{bnpp},PA,img/im{i}_mask.png")
    (root / "img" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    lines.append("PATX,img/corrupt.png,2020-02-01,,500,PA,")           # undecodable image
    wrong_mask = np.zeros((10, 10), np.uint8)
    cv2.imwrite(str(root / "img" / "small_mask.png"), wrong_mask)
    # Exact repeats are duplicate_row (the same image under another patient is conflicting_patient).
    lines.append(lines[1])
    lines.append(lines[2])
    image, _ = synthetic_chest(140, 120, 99)
    cv2.imwrite(str(root / "img" / "mism.png"), image)
    lines.append("PATW,img/mism.png,2020-02-03,,500,PA,img/small_mask.png")  # mask shape mismatch
    lines.append("PATV,img/nothere.png,2020-02-03,,500,PA,")                # missing file
    (root / "manifest.csv").write_text("\n".join(lines) + "\n")
    return root


def shard_examples(out_dir):
    """{image_id: {size: serialized bytes}} over every shard in out_dir."""
    import tensorflow as tf

    from bnp_cxr.records.schema import parse_example

    found = {}
    for path in sorted(out_dir.glob("*.tfrecord")):
        size = int(SHARD_PATTERN.match(path.name)["size"])
        for raw in tf.data.TFRecordDataset(str(path)):
            image_id = parse_example(raw)["image_id"].numpy().decode()
            found.setdefault(image_id, {})[size] = raw.numpy()
    return found


@pytest.fixture(scope="module")
def written(archive, tmp_path_factory):
    out = tmp_path_factory.mktemp("records")
    manifest = load_manifest(archive / "manifest.csv")
    summary = write_records(manifest, out, IngestConfig(sizes=SIZES, shard_size=3, progress=False))
    return manifest, out, summary


def test_summary_accounts_for_every_row(written):
    manifest, out, summary = written
    assert summary["rows"] == 19 == summary["written"] + summary["rejected"]
    assert summary["written"] == 14
    assert summary["reject_reasons"] == {"duplicate_row": 2, "file_not_found": 1, "mask_shape_mismatch": 1,
                                         "undecodable_pixels": 1}
    assert sum(c["written"] for c in summary["per_split"].values()) == 14
    assert all(sum(per.values()) == 14 for per in summary["per_size"].values())
    assert json.loads((out / "summary.json").read_text()) == summary


def test_rejects_csv_names_row_path_and_reason(written):
    _, out, _ = written
    with open(out / "rejects.csv") as handle:
        rows = list(csv.DictReader(handle))
    by_row = {int(r["row"]): r for r in rows}
    assert set(by_row) == {16, 17, 18, 19, 20}
    assert by_row[16]["reason"] == "undecodable_pixels" and by_row[16]["image_path"] == "img/corrupt.png"
    assert by_row[16]["stage"] == "image"
    assert by_row[19]["column"] == "lung_mask_path" and by_row[19]["reason"] == "mask_shape_mismatch"
    assert by_row[20]["reason"] == "file_not_found"


def test_shards_named_and_complete(written):
    manifest, out, summary = written
    names = sorted(path.name for path in out.glob("*.tfrecord"))
    assert all(SHARD_PATTERN.match(name) for name in names)
    for split, count in summary["shards"].items():
        for size in SIZES:
            assert sorted(n for n in names if n.startswith(f"{split}-{size}px-")) == [
                f"{split}-{size}px-{i:05d}-of-{count:05d}.tfrecord" for i in range(count)]
    assert not list(out.glob("*.tmp"))
    examples = shard_examples(out)
    assert len(examples) == 14 and all(set(sizes) == set(SIZES) for sizes in examples.values())


def test_reader_yields_images_targets_and_masks(written):
    from bnp_cxr.records.reader import make_dataset

    manifest, out, summary = written
    expected = {row.image_id: row for row in manifest.rows}
    seen = 0
    for split in summary["per_split"]:
        dataset = make_dataset(out, split, 128, batch_size=4, deterministic=True, with_metadata=True)
        for images, targets, meta in dataset:
            assert images.shape[1:] == (128, 128, 1) and images.dtype.name == "float32"
            assert 0.0 <= float(images.numpy().min()) and float(images.numpy().max()) <= 1.0
            for k, image_id in enumerate(meta["image_id"].numpy()):
                row = expected[image_id.decode()]
                want = [row.log10_bnp, row.log10_bnpp]
                got = targets.numpy()[k]
                assert all((math.isnan(w) and math.isnan(g)) or g == pytest.approx(w, abs=1e-6) for w, g in zip(want, got))
                top, left, bottom, right = meta["content_box"].numpy()[k]
                image = images.numpy()[k, ..., 0]
                assert image[:top].max(initial=0) == 0 and image[:, :left].max(initial=0) == 0  # black padding
                lungs = meta["lung_mask"].numpy()[k].astype(bool)
                assert meta["has_lung_mask"].numpy()[k] and lungs.any()
                assert image[lungs].mean() < image[top:bottom, left:right][~lungs[top:bottom, left:right]].mean()
                seen += 1
    assert seen == 14


def test_reader_reads_several_splits_as_one(written):
    from bnp_cxr.records.reader import make_dataset

    _, out, summary = written

    def image_ids(split):
        dataset = make_dataset(out, split, 128, batch_size=4, deterministic=True, with_metadata=True)
        return sorted(image_id for _, _, meta in dataset for image_id in meta["image_id"].numpy())

    splits = sorted(summary["per_split"])
    assert len(splits) >= 2 and image_ids(splits) == sorted(sum((image_ids(split) for split in splits), []))


def test_reader_augmentation_is_seeded_and_bounded(written):
    from bnp_cxr.records.reader import AugmentConfig, make_dataset

    _, out, summary = written
    split = max(summary["per_split"], key=lambda s: summary["per_split"][s]["written"])

    def first_batch(seed, augment):
        dataset = make_dataset(out, split, 64, batch_size=4, training=True, augment=augment, seed=seed,
                               deterministic=True)
        return next(iter(dataset))[0].numpy()

    plain = first_batch(1, None)
    augmented = first_batch(1, AugmentConfig())
    assert augmented.shape == plain.shape and 0 <= augmented.min() and augmented.max() <= 1
    assert np.abs(augmented - plain).mean() > 1e-3
    np.testing.assert_array_equal(augmented, first_batch(1, AugmentConfig()))


def test_reader_site_augmentation_is_seeded_and_leaves_the_padding(written):
    from bnp_cxr.records.augment import SITE_AUGMENT, AugmentConfig
    from bnp_cxr.records.reader import make_dataset

    _, out, summary = written
    split = max(summary["per_split"], key=lambda s: summary["per_split"][s]["written"])
    # No affine: the padding outside the content box must stay black through the site rendering.
    still = dataclasses.replace(SITE_AUGMENT, max_rotation_deg=0.0, max_scale_change=0.0, max_aspect_change=0.0,
                                max_shift_fraction=0.0, max_brightness=0.0, contrast_range=(1.0, 1.0), noise_std=0.0)

    def first_batch(seed, augment):
        dataset = make_dataset(out, split, 64, batch_size=4, training=True, augment=augment, seed=seed,
                               deterministic=True, with_metadata=True)
        images, _, meta = next(iter(dataset))
        return images.numpy(), meta["content_box"].numpy()

    plain, boxes = first_batch(2, AugmentConfig(max_rotation_deg=0.0, max_scale_change=0.0, max_shift_fraction=0.0,
                                                max_brightness=0.0, contrast_range=(1.0, 1.0), noise_std=0.0))
    rendered, _ = first_batch(2, still)
    np.testing.assert_array_equal(rendered, first_batch(2, still)[0])
    assert 0 <= rendered.min() and rendered.max() <= 1 and np.abs(rendered - plain).mean() > 1e-3
    for image, box in zip(rendered[..., 0], boxes):
        top, left, bottom, right = box
        outside = np.ones(image.shape, bool)
        outside[top:bottom, left:right] = False
        assert image[outside].max(initial=0) == 0


def neutral_site(**steps) -> "SiteAugmentConfig":  # noqa: F821
    """A site rendering that does only `steps` (every step drawn, the others at no change)."""
    from bnp_cxr.records.augment import SiteAugmentConfig

    neutral = {"gamma_range": (1.0, 1.0), "min_grey_range": 1.0, "max_blur_sigma_fraction": 0.0,
               "min_resolution": 1.0, "max_noise_std": 0.0}
    return SiteAugmentConfig(probability=1.0, **{**neutral, **steps})


def checkerboard(size: int = 64) -> np.ndarray:
    """A 2-px checkerboard at 0.2 / 0.8: fine detail every blur or resampling smooths."""
    rows, cols = np.indices((size, size))
    return np.where((rows // 2 + cols // 2) % 2, 0.8, 0.2).astype(np.float32)[..., None]


@pytest.mark.parametrize("steps, check", [
    ({}, lambda before, after: np.allclose(after, before, atol=1e-6)),
    ({"gamma_range": (0.5, 0.5)}, lambda before, after: np.allclose(after, before ** 0.5, atol=1e-6)),
    ({"min_grey_range": 0.5}, lambda before, after: np.ptp(after) < np.ptp(before) and np.allclose(
        (after - after.min()) / np.ptp(after), (before - before.min()) / np.ptp(before), atol=1e-5)),
    ({"max_blur_sigma_fraction": 0.03}, lambda before, after: after.std() < 0.9 * before.std()),
    ({"min_resolution": 0.3}, lambda before, after: after.std() < 0.9 * before.std()),
    ({"max_noise_std": 0.05}, lambda before, after: 0 < np.abs(after - before).mean() < 0.05),
], ids=["neutral", "gamma", "grey_range", "blur", "resolution", "noise"])
def test_site_render_steps_act_inside_the_content_box_only(steps, check):
    import tensorflow as tf

    from bnp_cxr.records.augment import site_render

    image, box = checkerboard(), np.array([8, 16, 56, 48])
    # seed 3: every step's strength is well away from no change (uniform draws; fixed by the stateless seed)
    after = site_render(tf.constant(image), tf.constant(box), tf.constant([3, 0], tf.int64), neutral_site(**steps))
    after = after.numpy()
    inside = np.zeros(image.shape, bool)
    inside[8:56, 16:48] = True
    np.testing.assert_array_equal(after[~inside], image[~inside])
    assert 0 <= after.min() and after.max() <= 1
    assert check(image[inside], after[inside])


@pytest.mark.parametrize("sigma, max_sigma, shape", [(1.0, 1.28, (64, 64)), (0.3, 1.28, (40, 24)), (2.5, 2.5, (32, 48)),
                                                  (0.0, 0.5, (16, 16))])
def test_gaussian_blur_is_scipy_separable_correlation_with_reflected_edges(sigma, max_sigma, shape):
    """The site rendering's blur: the normalised Gaussian of radius ceil(3 max_sigma) along rows then columns,
    edges mirrored without repeating the edge pixel (scipy's mode 'mirror', TF's REFLECT)."""
    import tensorflow as tf
    from scipy.ndimage import correlate1d

    from bnp_cxr.records.augment import _gaussian_blur

    image = np.random.default_rng(0).uniform(size=(*shape, 1)).astype(np.float32)
    radius = max(1, math.ceil(3 * max_sigma))
    kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / max(sigma, 1e-3)) ** 2)
    kernel /= kernel.sum()
    expected = correlate1d(correlate1d(image[..., 0].astype(np.float64), kernel, axis=0, mode="mirror"), kernel,
                           axis=1, mode="mirror")
    blurred = _gaussian_blur(tf.constant(image), tf.constant(sigma, tf.float32), max_sigma).numpy()
    assert blurred.shape == image.shape
    np.testing.assert_allclose(blurred[..., 0], expected, atol=1e-6)


@pytest.mark.parametrize("probability, changed", [(0.0, False), (1.0, True)])
def test_site_render_probability(probability, changed):
    import tensorflow as tf

    from bnp_cxr.records.augment import SiteAugmentConfig, site_render

    image = checkerboard()
    config = dataclasses.replace(SiteAugmentConfig(), probability=probability)
    after = site_render(tf.constant(image), tf.constant([0, 0, 64, 64]), tf.constant([5, 1], tf.int64), config)
    assert (not np.array_equal(after.numpy(), image)) == changed


def off_centre_square(size: int = 64) -> np.ndarray:
    """A bright square left of centre on a dark field, [1, size, size, 1]: its side shows a flip."""
    image = np.zeros((1, size, size, 1), np.float32)
    image[0, size // 4:size * 3 // 4, size // 8:size * 3 // 8] = 1.0
    return image


@pytest.mark.parametrize("config_args, mask_dtype", [
    ({}, np.float32),
    ({"horizontal_flip": True}, np.uint8),
    ({"max_rotation_deg": 20.0, "max_scale_change": 0.2, "max_shift_fraction": 0.1}, bool),
    ({"max_aspect_change": 0.2}, np.float32),
], ids=["default", "flip", "wide", "aspect"])
def test_augmentation_moves_mask_with_image(config_args, mask_dtype):
    import tensorflow as tf

    from bnp_cxr.records.augment import AugmentConfig, augment_batch

    config = AugmentConfig(**config_args)
    image = off_centre_square()
    mask = (image > 0.5).astype(mask_dtype)
    moved_any = False
    for seed in range(8):
        pair = tf.constant([seed, 7], tf.int64)
        augmented, moved = augment_batch(tf.constant(image), pair, config, masks=mask)
        assert moved.dtype == tf.as_dtype(mask_dtype) and set(np.unique(moved.numpy())) <= {0, 1}
        # The mask never changes the image's augmentation.
        np.testing.assert_array_equal(augmented.numpy(), augment_batch(tf.constant(image), pair, config).numpy())
        bright, inside = augmented.numpy()[0, ..., 0] > 0.5, moved.numpy()[0, ..., 0].astype(bool)
        assert 2 * (bright & inside).sum() / (bright.sum() + inside.sum()) > 0.95
        moved_any |= not np.array_equal(inside, mask[0, ..., 0].astype(bool))
    assert moved_any


@pytest.mark.parametrize("horizontal_flip, expect_flipped", [(False, False), (True, True)])
def test_augmentation_flips_only_when_asked(horizontal_flip, expect_flipped):
    import tensorflow as tf

    from bnp_cxr.records.augment import AugmentConfig, augment_batch

    image = off_centre_square()
    batch = tf.constant(np.repeat(image, 16, axis=0))
    _, masks = augment_batch(batch, tf.constant([3, 1], tf.int64), AugmentConfig(horizontal_flip=horizontal_flip),
                             masks=batch > 0.5)
    half = image.shape[2] // 2
    on_right = masks.numpy()[:, :, half:].sum(axis=(1, 2, 3)) > masks.numpy()[:, :, :half].sum(axis=(1, 2, 3))
    assert on_right.any() == expect_flipped


@pytest.mark.parametrize("max_aspect_change", [0.0, 0.3])
def test_aspect_change_stretches_the_width_only(max_aspect_change):
    import tensorflow as tf

    from bnp_cxr.records.augment import AugmentConfig, augment_batch

    image = np.zeros((16, 64, 64, 1), np.float32)
    image[:, 16:48, 16:48] = 1.0
    config = AugmentConfig(max_rotation_deg=0.0, max_scale_change=0.0, max_shift_fraction=0.0,
                           max_aspect_change=max_aspect_change)
    _, masks = augment_batch(tf.constant(image), tf.constant([4, 2], tf.int64), config, masks=image > 0.5)
    masks = masks.numpy()[..., 0]
    heights, widths = masks.any(axis=2).sum(axis=1), masks.any(axis=1).sum(axis=1)
    assert (heights == 32).all()
    if max_aspect_change:
        assert widths.min() < 30 and widths.max() > 34 and (np.abs(widths - 32) <= 0.3 * 32 + 1).all()
    else:
        assert (widths == 32).all()

def test_existing_output_needs_resume_or_overwrite(archive, written):
    _, out, _ = written
    with pytest.raises(FileExistsError, match="resume"):
        write_records(load_manifest(archive / "manifest.csv"), out, IngestConfig(sizes=SIZES, progress=False))


def test_resume_redoes_only_incomplete_groups(archive, written, tmp_path):
    import shutil

    _, out, summary = written
    copy = tmp_path / "records"
    shutil.copytree(out, copy)
    # An interruption: one group's shard never renamed (tmp left behind), its marker never written.
    victim = sorted(copy.glob("train-64px-*.tfrecord"))[0]
    victim.rename(victim.with_name(victim.name + ".tmp"))
    (copy / ".progress" / (victim.name.replace("-64px", "").replace(".tfrecord", ".json"))).unlink()
    resumed = write_records(load_manifest(archive / "manifest.csv"), copy,
                            IngestConfig(sizes=SIZES, shard_size=3, resume=True, progress=False))
    total_groups = sum(summary["shards"].values())
    assert resumed["resumed_groups"] == total_groups - 1
    assert shard_examples(copy) == shard_examples(out)
    assert {k: v for k, v in resumed.items() if k not in ("elapsed_s", "resumed_groups")} == {
        k: v for k, v in summary.items() if k not in ("elapsed_s", "resumed_groups")}


def test_two_workers_write_the_same_records(archive, written, tmp_path):
    _, out, summary = written
    parallel = write_records(load_manifest(archive / "manifest.csv"), tmp_path,
                             IngestConfig(sizes=SIZES, shard_size=3, workers=2, progress=False))
    assert parallel["written"] == summary["written"]
    assert shard_examples(tmp_path) == shard_examples(out)
