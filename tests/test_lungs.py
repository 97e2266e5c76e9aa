"""Lung U-Net: Dice, data folders and manifests, record geometry, prediction resizing, training, the CLI."""

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import cv2
import keras
import numpy as np
import pytest

from bnp_cxr import lungs
from bnp_cxr.data.imaging import REJECT_REASONS, RadiographError, read_radiograph
from bnp_cxr.lungs.train import _dataset
from bnp_cxr.records.prepare import prepare_row
from bnp_cxr.records.schema import UINT16_MAX
from bnp_cxr.rejects import Reject

ROOT = Path(__file__).resolve().parents[1]
SHENZHEN = ROOT.parent / "shared" / "data" / "lungs" / "shenzhen"


def ellipse_lungs(n: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Radiograph-like toys: a bright body with two dark ellipse lungs (jittered), plus noise."""
    rng = np.random.default_rng(seed)
    images = np.zeros((n, size, size), np.float32)
    masks = np.zeros((n, size, size), np.uint8)
    for k in range(n):
        body = np.zeros((size, size), np.float32)
        cv2.ellipse(body, (size // 2, size // 2), (int(size * 0.45), int(size * 0.48)), 0, 0, 360, 0.8, -1)
        for side in (-1, 1):
            centre = (int(size / 2 + side * size * rng.uniform(0.18, 0.24)), int(size * rng.uniform(0.42, 0.52)))
            axes = (int(size * rng.uniform(0.10, 0.15)), int(size * rng.uniform(0.22, 0.30)))
            cv2.ellipse(masks[k], centre, axes, float(rng.uniform(-10, 10)), 0, 360, 1, -1)
        images[k] = np.clip(np.where(masks[k], 0.25, body) + rng.normal(0, 0.08, (size, size)), 0, 1)
    return images[..., None], masks.astype(bool)


def write_folder(folder: Path, images: np.ndarray, masks: np.ndarray, scale: int = 2) -> Path:
    """A mask folder as Shenzhen lays it out: images/, masks/ (0/255 PNG) and index.csv."""
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    lines = ["id,image,mask"]
    for k, (image, mask) in enumerate(zip(images[..., 0], masks)):
        big = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
        cv2.imwrite(str(folder / "images" / f"{k}.png"), np.rint(big * 255).astype(np.uint8))
        big_mask = cv2.resize(mask.astype(np.uint8) * 255, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
        cv2.imwrite(str(folder / "masks" / f"{k}.png"), big_mask)
        lines.append(f"case{k},images/{k}.png,masks/{k}.png")
    (folder / "index.csv").write_text("\n".join(lines) + "\n")
    return folder


def identity_model(size: int) -> keras.Model:
    """A 'segmenter' whose probability is the image itself: predictions are checkable by hand."""
    inputs = keras.Input((size, size, 1))
    return keras.Model(inputs, keras.layers.Activation("linear")(inputs))


@pytest.mark.parametrize("predicted, truth, expected", [
    (np.zeros((4, 4)), np.zeros((4, 4)), 1.0),                       # empty vs empty: nothing to miss
    (np.eye(4), np.zeros((4, 4)), 0.0),
    (np.eye(4), np.eye(4), 1.0),
    (np.eye(4), np.fliplr(np.eye(4)), 0.0),                          # disjoint
    (np.pad(np.ones((4, 2)), ((0, 0), (0, 2))), np.ones((4, 4)), 2 * 8 / (8 + 16)),  # half the truth
    (np.ones((4, 4)), np.pad(np.ones((2, 4)), ((0, 2), (0, 0))), 2 * 8 / (16 + 8)),  # twice the truth
], ids=["empty-empty", "empty-truth", "identical", "disjoint", "half", "double"])
def test_dice_table(predicted, truth, expected):
    assert lungs.dice(predicted.astype(bool), truth.astype(bool)) == pytest.approx(expected)


def test_dice_rejects_shape_mismatch_and_batches_per_image():
    with pytest.raises(ValueError, match="shapes differ"):
        lungs.dice(np.zeros((4, 4), bool), np.zeros((4, 5), bool))
    stack = np.stack([np.eye(4), np.zeros((4, 4))]).astype(bool)
    assert lungs.dice_per_image(stack, np.stack([np.eye(4), np.eye(4)]).astype(bool)).tolist() == [1.0, 0.0]


@pytest.mark.parametrize("size, depth", [(32, 2), (64, 4)])
def test_build_unet_shapes_and_names(size, depth):
    model = lungs.build_unet(size, base_filters=4, depth=depth)
    assert model.input_shape == (None, size, size, 1) and model.output_shape == (None, size, size, 1)
    names = {layer.name for layer in model.layers}
    assert {"image", "bottleneck_conv1", f"down{depth - 1}_pool", "up0_concat", "lung_probability"} <= names
    output = model.predict(np.random.default_rng(0).random((2, size, size, 1), np.float32), verbose=0)
    assert output.min() >= 0 and output.max() <= 1


def test_build_unet_rejects_indivisible_size():
    with pytest.raises(ValueError, match="divisible"):
        lungs.build_unet(48, depth=5)


def test_unet_learns_synthetic_lungs():
    images, masks = ellipse_lungs(48, 32)
    result = lungs.train_lung_model(images, masks, epochs=12, batch_size=8, base_filters=8, depth=2,
                                    learning_rate=3e-3, val_fraction=0.25, augment=False)
    assert (result.n_train, result.n_val) == (36, 12) and result.dice_per_image.shape == (12,)
    assert result.dice_mean > 0.8
    assert set(result.history) >= {"loss", "dice", "val_loss", "val_dice"}


def test_augmented_batches_keep_image_and_mask_together():
    _, masks = ellipse_lungs(8, 32)
    images = masks[..., None].astype(np.float32)  # the image is its mask: both must land on the same pixels
    batches = list(_dataset(images, masks, 4, shuffle_seed=None, augment=True))
    assert [image.shape for image, _ in batches] == [(4, 32, 32, 1)] * 2
    augmented = np.concatenate([image.numpy()[..., 0] for image, _ in batches])
    moved = np.concatenate([mask.numpy()[..., 0] for _, mask in batches])
    assert set(np.unique(moved)) <= {0.0, 1.0} and 0 <= augmented.min() and augmented.max() <= 1
    assert all(lungs.dice(image > 0.5, mask > 0.5) > 0.95 for image, mask in zip(augmented, moved))
    assert any(not np.array_equal(mask > 0.5, truth) for mask, truth in zip(moved, masks))


def test_split_is_seeded_and_disjoint():
    train, val = lungs.split_indices(20, 0.15, seed=3)
    assert len(val) == 3 and not set(train) & set(val) and len(train) + len(val) == 20
    assert np.array_equal(val, lungs.split_indices(20, 0.15, seed=3)[1])
    assert not np.array_equal(val, lungs.split_indices(20, 0.15, seed=4)[1])


def test_predict_same_size_thresholds_the_probability():
    image = np.random.default_rng(1).random((3, 16, 16, 1), np.float32)
    for threshold in (0.3, 0.5):
        predicted = lungs.predict_lung_masks(identity_model(16), image, threshold=threshold)
        assert predicted.dtype == bool and np.array_equal(predicted, image[..., 0] > threshold)


@pytest.mark.parametrize("image_size", [64, 24])
def test_predict_resizes_to_the_model_and_back(image_size):
    truth = np.zeros((image_size, image_size), bool)
    truth[image_size // 4:image_size * 3 // 4, image_size // 8:image_size // 2] = True
    predicted = lungs.predict_lung_masks(identity_model(32), truth[None, ..., None].astype(np.float32))
    assert predicted.shape == (1, image_size, image_size)
    assert lungs.dice(predicted[0], truth) > 0.9
    empty = np.zeros((0, image_size, image_size, 1), np.float32)
    assert lungs.predict_lung_masks(identity_model(32), empty).shape == (0, image_size, image_size)


def test_keep_two_largest_components_drops_specks():
    image = np.zeros((1, 32, 32, 1), np.float32)
    image[0, 4:28, 3:13] = image[0, 4:26, 18:29] = 1  # two lungs
    image[0, 30:32, 30:32] = image[0, 0:2, 15:17] = 1  # specks
    raw = lungs.predict_lung_masks(identity_model(32), image)
    kept = lungs.predict_lung_masks(identity_model(32), image, keep_components=2)
    assert raw.sum() == kept.sum() + 8
    assert np.array_equal(kept[0], image[0, ..., 0].astype(bool) & ~np.isin(np.arange(32), [0, 1, 30, 31])[:, None])
    assert np.array_equal(lungs.keep_largest_components(kept[0], 2), kept[0])


def test_read_mask_folder_lists_pairs(tmp_path):
    images, masks = ellipse_lungs(3, 16)
    folder = write_folder(tmp_path / "set", images, masks)
    pairs = lungs.read_mask_folder(folder)
    assert pairs == [(str(folder / "images" / f"{k}.png"), str(folder / "masks" / f"{k}.png")) for k in range(3)]
    assert lungs.read_mask_folder(folder / "index.csv") == pairs


@pytest.mark.parametrize("index_text, message", [
    (None, "no index at"),
    ("id,picture,mask\na,images/0.png,masks/0.png\n", "need image and mask"),
    ("id,image,mask\na,images/0.png,masks/0.png\nb,images/9.png,masks/0.png\n",
     r"file_not_found: index.csv line 3: image '.*9.png' not found"),
    ("id,image,mask\na,images/0.png,\n", "missing_path: index.csv line 2: mask is empty"),
    ("id,image,mask\na,images/0.png,masks/0.png\nb,images/0.png,masks/0.png\n", "duplicate_row: index.csv line 3"),
    ("id,image,mask\n", "lists no usable image/mask pairs"),
], ids=["no-index", "bad-columns", "missing-image", "empty-mask", "duplicate", "no-rows"])
def test_read_mask_folder_errors_name_the_file_and_row(tmp_path, index_text, message):
    images, masks = ellipse_lungs(1, 16)
    folder = write_folder(tmp_path / "set", images, masks)
    if index_text is None:
        (folder / "index.csv").unlink()
    else:
        (folder / "index.csv").write_text(index_text)
    with pytest.raises(lungs.LungDataError, match=message):
        lungs.read_mask_folder(folder)


def test_load_pairs_skips_unreadable_rows_and_reports_them(tmp_path):
    images, masks = ellipse_lungs(3, 16)
    folder = write_folder(tmp_path / "set", images, masks)
    (folder / "images" / "1.png").write_bytes(b"not an image at all")
    cv2.imwrite(str(folder / "masks" / "2.png"), np.zeros((7, 7), np.uint8))
    rejects = []
    loaded, loaded_masks = lungs.load_pairs(lungs.read_mask_folder(folder), 16, rejects=rejects)
    assert loaded.shape == (1, 16, 16, 1) and loaded.dtype == np.float32 and loaded_masks.dtype == bool
    with pytest.raises(RadiographError) as garbage:
        read_radiograph(folder / "images" / "1.png")
    assert all(isinstance(r, Reject) for r in rejects)
    assert [(Path(r.image_path).name, Path(r.mask_path).name, r.reason, r.column) for r in rejects] == [
        ("1.png", "1.png", garbage.value.reason, ""), ("2.png", "2.png", "mask_shape_mismatch", "mask")]
    with pytest.warns(UserWarning, match="skipped .*1.png"):
        lungs.load_pairs(lungs.read_mask_folder(folder), 16)
    with pytest.raises(lungs.LungDataError, match="none of the 1"):
        lungs.load_pairs(lungs.read_mask_folder(folder)[1:2], 16, rejects=[])


@pytest.fixture(scope="module")
def phantom_cohort(tmp_path_factory) -> Path:
    from bnp_cxr.phantom import CohortConfig, generate_cohort

    out = tmp_path_factory.mktemp("cohort")
    generate_cohort(out, CohortConfig.small(n_patients=6, n_images=6), workers=1, progress=False)
    return out


def test_manifest_rows_with_problems_are_reported_and_the_rest_go_on(tmp_path):
    images, masks = ellipse_lungs(2, 16)
    folder = write_folder(tmp_path / "set", images, masks)
    (folder / "manifest.csv").write_text(
        "patient_id,image_path,view,lung_mask_path\n"
        "A,images/0.png,PA,masks/0.png\n"
        "B,images/1.png,PA,\n"               # no mask: not a pair, not a problem
        "B,images/1.png,LATERAL,masks/1.png\n"
        "C,images/0.png,PA,masks/0.png\n"
        "D,images/7.png,AP,masks/1.png\n")
    rejects = []
    assert lungs.read_mask_folder(folder / "manifest.csv", rejects=rejects) == [
        (str(folder / "images" / "0.png"), str(folder / "masks" / "0.png"))]
    assert [(r.source, r.row, r.reason, r.detail.split(":")[0], Path(r.mask_path).name) for r in rejects] == [
        ("manifest.csv", 4, "lateral_view", "manifest.csv line 4", "1.png"),
        ("manifest.csv", 5, "duplicate_row", "manifest.csv line 5", "0.png"),
        ("manifest.csv", 6, "file_not_found", "manifest.csv line 6", "1.png")]
    with pytest.raises(lungs.LungDataError, match="3 row"):
        lungs.read_mask_folder(folder / "manifest.csv")


def test_phantom_manifest_pairs_match_the_records_geometry(phantom_cohort):
    """DICOM phantom (256 x 224, letterboxed) through its manifest: same pixels and masks as the records."""
    rejects = []
    pairs = lungs.read_mask_folder(phantom_cohort / "manifest.csv", rejects=rejects)
    assert pairs and all(image.endswith(".dcm") and mask.endswith(".png") for image, mask in pairs)
    assert {r.reason for r in rejects} <= {"lateral_view", "duplicate_row", "file_not_found"}
    unreadable = []
    images, masks = lungs.load_pairs(pairs, 64, rejects=unreadable)
    assert {r.reason for r in unreadable} <= set(REJECT_REASONS) | {"bad_mask", "mask_shape_mismatch"}
    read = [pair for pair in pairs if pair[0] not in {r.image_path for r in unreadable}]
    assert len(read) == len(images) >= 2
    for (image_path, mask_path), image, mask in zip(read, images, masks, strict=True):
        row = SimpleNamespace(abs_path=image_path, lung_mask_path=mask_path, component_mask_path=None)
        record = prepare_row(row, (64,)).records[64]
        np.testing.assert_allclose(image[..., 0], record.image / UINT16_MAX, atol=1 / UINT16_MAX)
        assert np.array_equal(mask, record.lung_mask.astype(bool)) and mask.any()
        top, left, bottom, right = record.content_box
        assert left > 0 and not image[:, :left].any() and not mask[:, :left].any()


def test_save_and_load_round_trip_with_sidecar(tmp_path):
    images, masks = ellipse_lungs(8, 16)
    out = tmp_path / "m" / "unet16.keras"
    result = lungs.train_lung_model(images, masks, epochs=1, batch_size=4, base_filters=4, depth=2, out_path=out,
                                    data_name="toys")
    info = json.loads(lungs.sidecar_path(out).read_text())
    assert info["size"] == 16 and info["data"] == "toys" and (info["n_train"], info["n_val"]) == (7, 1)
    assert info["dice_mean"] == pytest.approx(result.dice_mean)
    loaded = lungs.load_lung_model(out)
    np.testing.assert_array_equal(lungs.predict_lung_masks(loaded, images),
                                  lungs.predict_lung_masks(result.model, images))
    with pytest.raises(FileNotFoundError, match="train_lungs.py"):
        lungs.load_lung_model(tmp_path / "absent.keras")


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "tools" / "train_lungs.py"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_cli_trains_on_a_folder_end_to_end(tmp_path):
    images, masks = ellipse_lungs(12, 16)
    folder = write_folder(tmp_path / "set", images, masks)
    (folder / "images" / "3.png").write_bytes(b"broken")
    out = tmp_path / "out" / "unet16.keras"
    result = run_cli("--data", str(folder), "--size", "16", "--epochs", "2", "--batch-size", "4",
                     "--base-filters", "4", "--depth", "2", "--out", str(out), "--verbose", "0", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "skipped" in result.stdout and "3.png" in result.stdout
    assert "12 listed, 11 read, 1 skipped" in result.stdout
    assert "held-out Dice (2 images, 9 trained on): mean" in result.stdout
    assert out.is_file() and json.loads(lungs.sidecar_path(out).read_text())["data"] == "set"


@pytest.mark.slow
def test_cli_defaults_to_the_phantom_cohort(phantom_cohort, tmp_path):
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "cohort").symlink_to(phantom_cohort, target_is_directory=True)
    result = run_cli("--size", "32", "--epochs", "1", "--base-filters", "4", "--depth", "2", "--verbose", "0",
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "lateral_view" in result.stdout and "held-out Dice" in result.stdout
    assert (tmp_path / "work" / "lungs" / "unet32.keras").is_file()
    assert json.loads((tmp_path / "work" / "lungs" / "unet32.json").read_text())["data"] == "cohort/manifest.csv"


def test_cli_without_a_cohort_says_how_to_make_one(tmp_path):
    result = run_cli(cwd=tmp_path)
    assert result.returncode == 2 and "tools/make_phantom.py" in result.stderr


@pytest.mark.slow
def test_real_shenzhen_lungs_beat_the_mean_mask():
    if not (SHENZHEN / "index.csv").is_file():
        pytest.skip(f"real lung data absent: {SHENZHEN} (the shared test data sit beside the repository)")
    images, masks = lungs.load_pairs(lungs.read_mask_folder(SHENZHEN)[:24], 64)
    result = lungs.train_lung_model(images, masks, epochs=30, batch_size=4, base_filters=8, depth=3,
                                    learning_rate=3e-3, val_fraction=0.25, augment=False)
    train = np.setdiff1d(np.arange(len(images)), result.val_indices)
    mean_mask = masks[train].mean(axis=0) > 0.5
    baseline = lungs.dice_per_image(np.broadcast_to(mean_mask, masks[result.val_indices].shape),
                                    masks[result.val_indices]).mean()
    assert result.dice_mean > 0.80
    assert result.dice_mean > baseline + 0.05, (result.dice_mean, baseline)
