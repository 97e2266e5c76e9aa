"""Model-input standardisation (bnp_cxr.records.standardize): CLAHE inside the content box, same in tf.data."""

import cv2
import numpy as np
import pytest
from archives import png_records

from bnp_cxr.records.standardize import STANDARDIZATIONS, standardize_image


def dim_radiograph(height: int = 64, width: int = 48) -> np.ndarray:
    """A low-contrast float image in [0.3, 0.45] with a brighter 'mediastinum' column."""
    rng = np.random.default_rng(0)
    image = 0.3 + 0.05 * rng.random((height, width))
    image[:, width // 3: 2 * width // 3] += 0.1
    return image.astype(np.float32)


def test_none_is_the_identity():
    image = dim_radiograph()[..., None]
    assert np.array_equal(standardize_image(image, (0, 0, 64, 48), "none"), image)


@pytest.mark.parametrize("shape", [(64, 48), (64, 48, 1)])
def test_clahe_spreads_contrast_inside_the_box_and_leaves_padding_alone(shape):
    image = np.zeros((64, 64), np.float32)
    image[:, 8:56] = dim_radiograph()
    out = standardize_image(image.reshape(*((64, 64) if len(shape) == 2 else (64, 64, 1))), (0, 8, 64, 56), "clahe")
    assert out.shape == ((64, 64) if len(shape) == 2 else (64, 64, 1)) and out.dtype == np.float32
    out = out.reshape(64, 64)
    assert np.all(out[:, :8] == 0) and np.all(out[:, 56:] == 0)  # letterbox padding untouched
    inside = out[:, 8:56]
    assert inside.std() > 1.2 * image[:, 8:56].std() and 0 <= inside.min() and inside.max() <= 1


def test_at_the_working_resolution_clahe_is_opencvs():
    image = cv2.resize(dim_radiograph(), (512, 512), interpolation=cv2.INTER_LINEAR)
    expected = cv2.createCLAHE(2.0, (8, 8)).apply(np.round(image * 255).astype(np.uint8)) / 255.0
    np.testing.assert_allclose(standardize_image(image, (0, 0, 512, 512), "clahe"), expected, atol=1e-6)


def test_clahe_treats_record_sizes_alike():
    """The same radiograph at 128 and 256 px is equalised alike (CLAHE runs at one working resolution)."""
    rng = np.random.default_rng(2)
    yy, xx = np.mgrid[:512, :512] / 512
    scene = 0.35 + 0.1 * np.sin(9 * xx) * np.cos(7 * yy) + 0.1 * (np.abs(xx - 0.5) < 0.12) + rng.normal(0, 0.01,
                                                                                                       (512, 512))
    scene = scene.astype(np.float32)
    small = cv2.resize(scene, (128, 128), interpolation=cv2.INTER_AREA)
    large = cv2.resize(scene, (256, 256), interpolation=cv2.INTER_AREA)
    from_large = cv2.resize(standardize_image(large, (0, 0, 256, 256), "clahe"), (128, 128),
                            interpolation=cv2.INTER_AREA)
    difference = np.abs(standardize_image(small, (0, 0, 128, 128), "clahe") - from_large).mean()
    assert difference < 0.02, difference


def test_an_empty_content_box_means_the_whole_image():
    image = dim_radiograph()
    assert np.array_equal(standardize_image(image, (0, 0, 0, 0), "clahe"), standardize_image(image, (0, 0, 64, 48),
                                                                                              "clahe"))


def test_unknown_method_is_refused():
    with pytest.raises(ValueError, match="standardize must be one of"):
        standardize_image(dim_radiograph(), (0, 0, 64, 48), "histeq")
    assert STANDARDIZATIONS == ("none", "clahe")


def test_the_reader_applies_the_same_standardisation(tmp_path):
    from bnp_cxr.records.reader import make_dataset

    rng = np.random.default_rng(1)
    entries = [(f"im{i}.png", np.clip(rng.normal(20000, 3000, (80, 64)), 0, 65535).astype(np.uint16),
                f"P{i},im{i}.png,2021-01-01,,1000,train") for i in range(3)]
    png_records(tmp_path, tmp_path / "records", "patient_id,image_path,study_datetime,bnp,bnpp,split", entries, (64,))
    plain = list(make_dataset(tmp_path / "records", "train", 64, batch_size=3, deterministic=True,
                              with_metadata=True))[0]
    clahe = list(make_dataset(tmp_path / "records", "train", 64, batch_size=3, deterministic=True,
                              standardize="clahe"))[0]
    for image, box, standardized in zip(plain[0].numpy(), plain[2]["content_box"].numpy(), clahe[0].numpy()):
        assert box[3] - box[1] < 64  # letterboxed: padding on the sides
        np.testing.assert_allclose(standardized, standardize_image(image, box, "clahe"), atol=1e-6)
    with pytest.raises(ValueError, match="standardize"):
        make_dataset(tmp_path / "records", "train", 64, standardize="bogus")
