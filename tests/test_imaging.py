"""Radiograph reader: real chest DICOMs, pydicom's codec/edge-case files, synthetic DICOM/PNG/JPEG, windowing."""

import pickle

import cv2
import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_modality_lut, apply_voi_lut
from pydicom.uid import JPEG2000Lossless, RLELossless

from bnp_cxr.data import imaging
from bnp_cxr.data.imaging import RadiographError, read_radiograph
from imaging_cases import (BASIC_TEXT_SR_STORAGE, STORED_MAX, dicom_dataset, implicit_syntax_name, jpegls_near,
                           pydicom_file, raw_pixels, shared_dicom, stored_image, write_dicom)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns on its deliberately odd files

# ---------------------------------------------------------------- real chest radiographs (../shared/data/dicom)

SHARED_CASES = {  # name: (rows, columns, bits stored, transfer syntax name)
    "RG1_UNCR.dcm": (1955, 1841, 15, "Explicit VR Little Endian"),
    "RG1_J2KR.dcm": (1955, 1841, 15, "JPEG 2000 Image Compression (Lossless Only)"),
    "RG1_JLSN.dcm": (1955, 1841, 15, "JPEG-LS Lossy (Near-Lossless) Image Compression"),
    "RG1_UNCI.dcm": (1955, 1841, 15, "Explicit VR Little Endian"),
    "RG1_J2KI.dcm": (1955, 1841, 15, "JPEG 2000 Image Compression"),
    "CR-MONO1-10-chest.dcm": (440, 440, 10, "Implicit VR Little Endian"),  # no file meta at all
}


@pytest.fixture(scope="module")
def shared():
    """Decode each shared file at most once per module (the J2K/JPEG-LS decodes dominate the run time)."""
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = read_radiograph(shared_dicom(name))
        return cache[name]
    return get


def region_means(pixels):
    """Mean of a central (spine/mediastinum) strip and of left and right mid-lung boxes, in image fractions."""
    h, w = pixels.shape

    def box(r0, r1, c0, c1):
        return float(pixels[int(r0 * h):int(r1 * h), int(c0 * w):int(c1 * w)].mean())
    return box(0.3, 0.7, 0.45, 0.55), box(0.3, 0.6, 0.15, 0.35), box(0.3, 0.6, 0.65, 0.85)


@pytest.mark.parametrize("name", sorted(SHARED_CASES))
def test_shared_dicom_decodes_to_display_convention(shared, name):
    rows, columns, bits, syntax = SHARED_CASES[name]
    radiograph = shared(name)
    assert radiograph.pixels.dtype == np.float32 and radiograph.pixels.shape == (rows, columns)
    assert np.isfinite(radiograph.pixels).all()
    assert (radiograph.bits_stored, radiograph.transfer_syntax) == (bits, syntax)
    assert (radiograph.photometric, radiograph.modality, radiograph.view_position) == ("MONOCHROME1", "CR", "PA")
    assert radiograph.inverted
    spine, left_lung, right_lung = region_means(radiograph.pixels)
    assert spine > left_lung and spine > right_lung
    # The same boxes on the stored MONOCHROME1 values have the opposite order, so the check above has teeth.
    stored_spine, stored_left, stored_right = region_means(raw_pixels(shared_dicom(name)).astype(np.float32))
    assert stored_spine < stored_left and stored_spine < stored_right
    # Inversion is exact: display = (2**bits - 1) - stored.
    np.testing.assert_array_equal(radiograph.pixels, (2 ** bits - 1) - raw_pixels(shared_dicom(name)))


@pytest.mark.parametrize("compressed, uncompressed", [("RG1_J2KR.dcm", "RG1_UNCR.dcm"),
                                                      ("RG1_J2KI.dcm", "RG1_UNCI.dcm")])
def test_shared_jpeg2000_matches_uncompressed_twin_exactly(shared, compressed, uncompressed):
    np.testing.assert_array_equal(shared(compressed).pixels, shared(uncompressed).pixels)


def test_shared_jpegls_near_lossless_within_its_near_bound(shared):
    near = jpegls_near(shared_dicom("RG1_JLSN.dcm"))
    error = np.abs(shared("RG1_JLSN.dcm").pixels - shared("RG1_UNCR.dcm").pixels)
    assert 0 < near <= 8 and error.max() <= near


# ------------------------------------------------------- pydicom test files: codecs, LUTs and rejections

@pytest.mark.parametrize("compressed, uncompressed", [
    ("MR_small_RLE.dcm", "MR_small.dcm"),
    ("MR_small_jpeg_ls_lossless.dcm", "MR_small.dcm"),
    ("MR_small_jp2klossless.dcm", "MR_small.dcm"),
    ("693_J2KR.dcm", "693_UNCR.dcm"),  # CT with rescale intercept -1024
])
def test_lossless_codecs_match_uncompressed_twin(compressed, uncompressed):
    ours = read_radiograph(pydicom_file(compressed)).pixels
    np.testing.assert_array_equal(ours, read_radiograph(pydicom_file(uncompressed)).pixels)


@pytest.mark.parametrize("name", ["JPEG-LL.dcm", "JPGLosslessP14SV1_1s_1f_8b.dcm", "JPEGLSNearLossless_08.dcm",
                                  "JPEGLSNearLossless_16.dcm", "MR_small_bigendian.dcm",
                                  "MR_small_implicit.dcm", "MR_small_padded.dcm", "image_dfl.dcm"])
def test_pydicom_monochrome2_files_keep_stored_values(name):
    path = pydicom_file(name)
    radiograph = read_radiograph(path)
    ds = pydicom.dcmread(path)
    assert not radiograph.inverted and radiograph.transfer_syntax == ds.file_meta.TransferSyntaxUID.name
    np.testing.assert_array_equal(radiograph.pixels, apply_modality_lut(ds.pixel_array, ds).astype(np.float32))


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR2_UNCR.dcm", "mlut_18.dcm"])
def test_modality_lut_and_rescale_match_pydicom(name):
    path = pydicom_file(name)
    ds = pydicom.dcmread(path)
    expected = apply_modality_lut(ds.pixel_array, ds)
    pixels = read_radiograph(path).pixels
    assert pixels.dtype == np.float32
    np.testing.assert_allclose(pixels, expected, rtol=1e-6, atol=1e-3)
    assert not np.array_equal(expected, ds.pixel_array)  # the file really has a non-identity transform


@pytest.mark.parametrize("name", ["vlut_04.dcm", "MR_small.dcm"])  # VOI LUT sequence; window centre/width
def test_voi_applied_only_when_asked(name):
    path = pydicom_file(name)
    ds = pydicom.dcmread(path)
    modality = apply_modality_lut(ds.pixel_array, ds)
    np.testing.assert_array_equal(read_radiograph(path).pixels, modality.astype(np.float32))
    windowed = read_radiograph(path, apply_voi_lut=True).pixels
    np.testing.assert_allclose(windowed, apply_voi_lut(modality, ds).astype(np.float32), rtol=1e-6)
    assert not np.allclose(windowed, modality)


@pytest.mark.parametrize("name, reason", [
    ("SC_rgb.dcm", "colour"), ("SC_rgb_rle.dcm", "colour"), ("US1_J2KR.dcm", "colour"),
    ("SC_ybr_full_uncompressed.dcm", "colour"), ("OBXXXX1A.dcm", "colour"), ("SC_rgb_2frame.dcm", "colour"),
    ("emri_small.dcm", "multi_frame"), ("emri_small_RLE.dcm", "multi_frame"), ("rtdose.dcm", "multi_frame"),
    ("test-SR.dcm", "not_an_image"), ("rtplan.dcm", "not_an_image"), ("waveform_ecg.dcm", "not_an_image"),
    ("emri_small_jpeg_2k_lossless_too_short.dcm", "multi_frame"),  # truncated, but the header decides first
    ("MR_truncated.dcm", "undecodable_pixels"),
])
def test_pydicom_files_rejected_with_reason(name, reason):
    path = pydicom_file(name)
    with pytest.raises(RadiographError) as caught:
        read_radiograph(path)
    assert caught.value.reason == reason and caught.value.path == path and caught.value.detail


# ------------------------------------------------------------------------------ synthetic DICOM cases

def read_synthetic(tmp_path, name="x.dcm", pixels=None, transfer_syntax=None, file_meta=True, **kwargs):
    """Write a synthetic dataset and read it back; reader keyword arguments go in `read=`."""
    read_kwargs = kwargs.pop("read", {})
    path = write_dicom(tmp_path / name, dicom_dataset(pixels, **kwargs), transfer_syntax, file_meta)
    return read_radiograph(path, **read_kwargs)


def rejection(tmp_path, **kwargs) -> RadiographError:
    with pytest.raises(RadiographError) as caught:
        read_synthetic(tmp_path, **kwargs)
    return caught.value


def test_monochrome1_and_monochrome2_of_same_image_display_identically(tmp_path):
    display = stored_image()
    mono2 = read_synthetic(tmp_path, "m2.dcm", display)
    mono1 = read_synthetic(tmp_path, "m1.dcm", (STORED_MAX - display).astype(np.uint16),
                           PhotometricInterpretation="MONOCHROME1")
    assert (mono2.inverted, mono1.inverted) == (False, True)
    np.testing.assert_array_equal(mono2.pixels, display)
    np.testing.assert_array_equal(mono1.pixels, display)


def test_signed_monochrome1_inverts_onto_the_signed_range(tmp_path):
    stored = stored_image(signed=True)
    radiograph = read_synthetic(tmp_path, pixels=stored, PhotometricInterpretation="MONOCHROME1")
    np.testing.assert_array_equal(radiograph.pixels, -1 - stored.astype(np.float32))  # [-2048, 2047] -> itself


@pytest.mark.parametrize("photometric, shape, inverted", [
    ("MONOCHROME2", None, False), ("MONOCHROME2", "IDENTITY", False), ("MONOCHROME2", "INVERSE", True),
    ("MONOCHROME1", None, True), ("MONOCHROME1", "IDENTITY", True),
    ("MONOCHROME1", "INVERSE", True),  # PS3.3 C.8.11.7: INVERSE is MONOCHROME1's required companion, one flip
])
def test_presentation_lut_shape(tmp_path, photometric, shape, inverted):
    stored = stored_image()
    radiograph = read_synthetic(tmp_path, pixels=stored, PhotometricInterpretation=photometric,
                                PresentationLUTShape=shape)
    assert radiograph.inverted is inverted
    np.testing.assert_array_equal(radiograph.pixels, STORED_MAX - stored if inverted else stored)


@pytest.mark.parametrize("slope, intercept", [(2.0, -100.0), (0.5, 10.0), (1.0, -1024.0), (-1.0, 0.0)])
@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
def test_rescale_applied(tmp_path, slope, intercept, photometric):
    stored = stored_image()
    radiograph = read_synthetic(tmp_path, pixels=stored, RescaleSlope=slope, RescaleIntercept=intercept,
                                PhotometricInterpretation=photometric)
    # Inverting the rescaled range maps slope*x + b onto slope*(max - x) + b.
    source = STORED_MAX - stored if photometric == "MONOCHROME1" else stored
    np.testing.assert_allclose(radiograph.pixels, slope * source.astype(np.float64) + intercept, rtol=1e-6)


def test_voi_window_applied_only_when_asked(tmp_path):
    stored = stored_image()
    plain = read_synthetic(tmp_path, "a.dcm", stored, WindowCenter=1000, WindowWidth=500)
    windowed = read_synthetic(tmp_path, "b.dcm", stored, WindowCenter=1000, WindowWidth=500,
                              read={"apply_voi_lut": True})
    np.testing.assert_array_equal(plain.pixels, stored)
    assert windowed.pixels[stored <= 700].max() == 0 and windowed.pixels[stored > 1300].min() == STORED_MAX


@pytest.mark.parametrize("view, lateral", [("LL", True), ("RL", True), ("LATERAL", True), ("LAT", True),
                                           ("ll", True), ("PA", False), ("AP", False), (None, False)])
def test_lateral_views(tmp_path, view, lateral):
    if lateral:
        assert rejection(tmp_path, ViewPosition=view).reason == "lateral_view"
        allowed = read_synthetic(tmp_path, ViewPosition=view, read={"allow_lateral": True})
        assert allowed.view_position == view.upper()
    else:
        assert read_synthetic(tmp_path, ViewPosition=view).view_position == view


@pytest.mark.parametrize("attributes, reason, detail_word", [
    ({"PixelData": None}, "no_pixel_data", "Pixel Data"),
    ({"PixelData": None, "Rows": None, "Columns": None, "SOPClassUID": BASIC_TEXT_SR_STORAGE},
     "not_an_image", "SR"),
    ({"Rows": 0, "PixelData": b""}, "empty_image", "0 x 48"),
    # Header says 20000 x 20000 but holds 6 KB: only a header check (no decode) can say absurd_dimensions.
    ({"Rows": 20000, "Columns": 20000}, "absurd_dimensions", "20000 x 20000"),
    ({"Columns": 17000, "Rows": 1}, "absurd_dimensions", "17000"),
    ({"read": {"max_pixels": 1000}}, "absurd_dimensions", "1000"),
    ({"PixelData": stored_image().tobytes()[:-100]}, "undecodable_pixels", "less than expected"),
    ({"SamplesPerPixel": 3, "PhotometricInterpretation": "RGB", "PlanarConfiguration": 0},
     "colour", "RGB has 3 samples"),
    ({"PhotometricInterpretation": "PALETTE COLOR"}, "colour", "PALETTE COLOR"),
    ({"NumberOfFrames": 2}, "multi_frame", "2"),
    ({"PhotometricInterpretation": None}, "undecodable_pixels", "PhotometricInterpretation"),
])
def test_synthetic_rejections(tmp_path, attributes, reason, detail_word):
    error = rejection(tmp_path, **attributes)
    assert error.reason == reason and detail_word in error.detail
    assert str(error) == f"{error.path}: {reason}: {error.detail}"


@pytest.mark.parametrize("view, reason", [("PA", "undecodable_pixels"), ("LL", "lateral_view")])
def test_file_cut_inside_pixel_data(tmp_path, view, reason):
    path = write_dicom(tmp_path / "cut.dcm", dicom_dataset(ViewPosition=view))
    path.write_bytes(path.read_bytes()[:-1000])  # the element's length now runs past the end of the file
    with pytest.raises(RadiographError) as caught:
        read_radiograph(path)
    assert caught.value.reason == reason  # header checks still come first


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless])
@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
def test_synthetic_lossless_round_trip(tmp_path, syntax, photometric):
    stored = stored_image()
    plain = read_synthetic(tmp_path, "plain.dcm", stored, PhotometricInterpretation=photometric)
    packed = read_synthetic(tmp_path, "packed.dcm", stored, syntax, PhotometricInterpretation=photometric)
    assert packed.transfer_syntax == syntax.name
    np.testing.assert_array_equal(packed.pixels, plain.pixels)


def test_file_without_meta_header_assumes_implicit_little_endian(tmp_path):
    stored = stored_image()
    radiograph = read_synthetic(tmp_path, pixels=stored, file_meta=False, PhotometricInterpretation="MONOCHROME1")
    assert radiograph.transfer_syntax == implicit_syntax_name()
    np.testing.assert_array_equal(radiograph.pixels, STORED_MAX - stored)


@pytest.mark.parametrize("attributes, expected", [
    ({"PixelSpacing": [0.2, 0.3]}, (0.2, 0.3)),
    ({"ImagerPixelSpacing": [0.15, 0.16]}, (0.15, 0.16)),
    ({"PixelSpacing": [0, 0], "ImagerPixelSpacing": [0.15, 0.15]}, (0.15, 0.15)),
    ({"PixelSpacing": [0.1, 0.1], "ImagerPixelSpacing": [0.15, 0.15]}, (0.1, 0.1)),
    ({"PixelSpacing": [0, 0]}, None),
    ({"PixelSpacing": [0.1]}, None),
    ({}, None),
])
def test_pixel_spacing(tmp_path, attributes, expected):
    assert read_synthetic(tmp_path, **attributes).pixel_spacing_mm == expected


def test_garbage_pixel_spacing_is_none(tmp_path):
    path = write_dicom(tmp_path / "x.dcm", dicom_dataset(PixelSpacing=[0.125, 0.125]))
    data = path.read_bytes()
    assert data.count(b"0.125\\0.125") == 1
    path.write_bytes(data.replace(b"0.125\\0.125", b"abcde\\fghij"))
    assert read_radiograph(path).pixel_spacing_mm is None


# ------------------------------------------------------------------------ not DICOM: files and errors

@pytest.mark.parametrize("content, reason, detail_word", [
    (b"patient,bnp\n1,100\n" * 20, "unsupported_format", "not DICOM"),
    (b"", "unsupported_format", "not DICOM"),
    (b"II*\x00" + bytes(200), "unsupported_format", "TIFF"),
    (b"%PDF-1.4" + bytes(200), "unsupported_format", "PDF"),
    (bytes(128) + b"DICM" + b"\xff" * 64, "unreadable", "DICM"),
    (b"\x89PNG\r\n\x1a\n" + bytes(40), "undecodable_pixels", "PNG"),
])
def test_non_dicom_files(tmp_path, content, reason, detail_word):
    path = tmp_path / "file.dcm"
    path.write_bytes(content)
    with pytest.raises(RadiographError) as caught:
        read_radiograph(path)
    assert caught.value.reason == reason and detail_word in caught.value.detail


@pytest.mark.parametrize("make_path", [lambda tmp: tmp / "missing.dcm", lambda tmp: tmp])
def test_missing_file_or_directory_is_unreadable(tmp_path, make_path):
    with pytest.raises(RadiographError) as caught:
        read_radiograph(make_path(tmp_path))
    assert caught.value.reason == "unreadable"


def test_radiograph_error_contract():
    error = RadiographError("colour", "PhotometricInterpretation RGB has 3 samples per pixel", "a/b.dcm")
    assert str(error) == "a/b.dcm: colour: PhotometricInterpretation RGB has 3 samples per pixel"
    assert isinstance(error, ValueError)
    clone = pickle.loads(pickle.dumps(error))  # worker processes send these back
    assert (clone.reason, clone.detail, clone.path, str(clone)) == (error.reason, error.detail, error.path,
                                                                     str(error))
    assert str(RadiographError("empty_image", "0 x 5")) == "empty_image: 0 x 5"
    with pytest.raises(ValueError):
        RadiographError("not_a_reason", "x")


@pytest.mark.parametrize("dtype, suffix", [(np.uint8, ".png"), (np.uint16, ".png"), (np.uint16, ".dcm")])
def test_png_round_trip_exact(tmp_path, dtype, suffix):
    image = np.random.default_rng(1).integers(0, np.iinfo(dtype).max + 1, (40, 30)).astype(dtype)
    ok, encoded = cv2.imencode(".png", image)
    path = tmp_path / f"image{suffix}"  # .dcm: detection is by magic bytes, not extension
    path.write_bytes(encoded.tobytes())
    radiograph = read_radiograph(path)
    assert (radiograph.photometric, radiograph.bits_stored, radiograph.inverted) == ("PNG", 8 * image.itemsize,
                                                                                     False)
    assert radiograph.pixels.dtype == np.float32
    np.testing.assert_array_equal(radiograph.pixels, image)


def test_jpeg_read(tmp_path):
    image = np.tile(np.linspace(0, 255, 64, dtype=np.float32), (48, 1)).astype(np.uint8)
    path = tmp_path / "image.jpg"
    cv2.imwrite(str(path), image, [cv2.IMWRITE_JPEG_QUALITY, 95])
    radiograph = read_radiograph(path)
    assert radiograph.photometric == "JPEG" and radiograph.pixels.shape == image.shape
    assert np.abs(radiograph.pixels - image).mean() < 2  # lossy codec: close, not exact


@pytest.mark.parametrize("orientation, upright", [
    (1, lambda image: image), (3, lambda image: np.rot90(image, 2)),
    (6, lambda image: np.rot90(image, -1)), (8, lambda image: np.rot90(image, 1)),  # 90 degrees clockwise / anti
])
def test_jpeg_is_read_upright_by_its_exif_orientation(tmp_path, orientation, upright):
    from PIL import Image

    image = np.tile(np.linspace(0, 255, 64, dtype=np.float32), (48, 1)).astype(np.uint8)
    image[:8] = 255  # a bright top edge: no rotation or flip maps the image onto itself
    picture = Image.fromarray(image, "L")
    exif = picture.getexif()
    exif[0x0112] = orientation  # EXIF Orientation: how a viewer turns the stored pixels to show them
    picture.save(tmp_path / "film.jpg", exif=exif, quality=100)
    pixels = read_radiograph(tmp_path / "film.jpg").pixels
    expected = upright(image)
    assert pixels.shape == expected.shape and np.abs(pixels - expected).mean() < 2


@pytest.mark.parametrize("channels, colourful, reason", [(3, False, None), (3, True, "colour"),
                                                         (4, False, None), (4, True, "colour")])
def test_colour_png(tmp_path, channels, colourful, reason):
    grey = np.random.default_rng(2).integers(0, 256, (20, 24)).astype(np.uint8)
    image = np.dstack([grey] * 3 + [np.full_like(grey, 255)] * (channels - 3))
    if colourful:
        image[5, 5, channels - 1] ^= 1  # a different blue, or a transparent pixel when there is alpha
    path = tmp_path / "c.png"
    cv2.imwrite(str(path), image)
    if reason:
        with pytest.raises(RadiographError) as caught:
            read_radiograph(path)
        assert caught.value.reason == reason
    else:
        np.testing.assert_array_equal(read_radiograph(path).pixels, grey)


@pytest.mark.parametrize("extension, size_offset, field_bytes", [
    (".png", lambda data: 16, 4),  # IHDR width, height; the chunk CRC is now wrong, so decoding would fail
    (".jpg", lambda data: data.find(b"\xff\xc0") + 5, 2),  # SOF0 height, width
])
def test_bitmap_absurd_header_rejected_before_decoding(tmp_path, extension, size_offset, field_bytes):
    ok, encoded = cv2.imencode(extension, np.zeros((4, 4), np.uint8))
    data = bytearray(encoded.tobytes())
    start = size_offset(bytes(data))
    data[start:start + 2 * field_bytes] = (60_000).to_bytes(field_bytes, "big") * 2
    path = tmp_path / f"big{extension}"
    path.write_bytes(bytes(data))
    with pytest.raises(RadiographError) as caught:
        read_radiograph(path)
    assert caught.value.reason == "absurd_dimensions" and "60000 x 60000" in caught.value.detail


# --------------------------------------------------------------------------------------- windowing

@pytest.fixture
def noisy_image():
    return np.random.default_rng(3).normal(1000.0, 300.0, (203, 157)).astype(np.float32)


def test_normalize_range_monotone_and_equal_to_window_then_apply(noisy_image):
    out = imaging.normalize_intensity(noisy_image)
    assert out.dtype == np.float32 and out.shape == noisy_image.shape
    assert out.min() == 0.0 and out.max() == 1.0
    order = np.argsort(noisy_image, axis=None)
    assert (np.diff(out.ravel()[order]) >= 0).all()
    window = imaging.intensity_window(noisy_image)
    np.testing.assert_array_equal(out, imaging.apply_window(noisy_image, window))


@pytest.mark.parametrize("low, high, stride", [(0.5, 99.5, 4), (5.0, 95.0, 1), (0.0, 100.0, 3), (10.0, 60.0, 2)])
def test_window_percentiles_honoured_on_strided_sample(noisy_image, low, high, stride):
    window = imaging.intensity_window(noisy_image, low, high, stride)
    expected = np.percentile(noisy_image[::stride, ::stride], (low, high))
    assert window == pytest.approx(tuple(expected))
    assert window == imaging.intensity_window(noisy_image, low, high, stride)  # deterministic
    out = imaging.normalize_intensity(noisy_image, low, high, 1)
    if stride == 1:
        assert (out == 0).mean() == pytest.approx(low / 100, abs=0.002)
        assert (out == 1).mean() == pytest.approx(1 - high / 100, abs=0.002)


@pytest.mark.parametrize("value", [0.0, 1234.5, -7.0])
def test_constant_image_normalizes_to_zeros(value):
    out = imaging.normalize_intensity(np.full((30, 20), value, np.float32))
    assert out.dtype == np.float32 and not out.any()


def test_apply_window_maps_ends_and_clips():
    pixels = np.array([[0.0, 10.0, 15.0, 20.0, 30.0]], np.float32)
    np.testing.assert_allclose(imaging.apply_window(pixels, (10.0, 20.0)), [[0.0, 0.0, 0.5, 1.0, 1.0]])


@pytest.mark.parametrize("kwargs", [{"low_percentile": 50, "high_percentile": 50}, {"low_percentile": -1},
                                    {"high_percentile": 101}, {"sample_stride": 0}])
def test_window_argument_errors(noisy_image, kwargs):
    with pytest.raises(ValueError):
        imaging.intensity_window(noisy_image, **kwargs)
