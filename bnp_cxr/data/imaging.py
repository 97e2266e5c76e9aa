"""Radiograph reader: DICOM / PNG / JPEG -> 2-D float32 in display convention, plus intensity windowing.

Display convention: air and lungs dark, bone bright (higher value = brighter), as a MONOCHROME2 viewer shows it.
Full bit depth is kept: `Radiograph.pixels` holds modality values (after the Modality LUT / rescale, and after the
VOI LUT only when asked), not a normalised image. Windowing to [0, 1] is a separate, explicit step
(`intensity_window` then `apply_window`, in bnp_cxr.data.windowing and re-exported here) so the records writer can
pick the window on the full-resolution image and apply it after resizing.
"""

from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass

import cv2
import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom import pixels as dicom_pixels
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from bnp_cxr.workspace import LATERAL_VIEWS
from bnp_cxr.data.windowing import apply_window, intensity_window, normalize_intensity  # noqa: F401 - public here too

REJECT_REASONS = ("unreadable", "not_an_image", "no_pixel_data", "undecodable_pixels", "colour", "multi_frame",
                  "lateral_view", "empty_image", "absurd_dimensions", "unsupported_format",
                  "unsupported_transfer_syntax")

# ViewPosition values (DICOM CID 4010 and common vendor spellings) that mean a lateral projection.
MAX_SIDE_PX = 16384

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
DICOM_MAGIC_OFFSET = 128
# Other image containers named in the rejection detail so a user knows what they handed us.
_OTHER_MAGICS = ((b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"), (b"BM", "BMP"), (b"GIF8", "GIF"),
                 (b"\x00\x00\x00\x0cjP  ", "JPEG 2000 (JP2)"), (b"\xffO\xffQ", "JPEG 2000 codestream"),
                 (b"PK\x03\x04", "ZIP archive"), (b"%PDF", "PDF"))
# A forced parse of arbitrary bytes "succeeds" with one junk element; real DICOM carries at least one of these.
_DICOM_IDENTITY_KEYWORDS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "Modality", "Rows", "PixelData")
_TRUNCATED = "file truncated"


class RadiographError(ValueError):
    """Why a file cannot be used as a frontal radiograph; `reason` is a short stable code."""

    def __init__(self, reason: str, detail: str, path: str | os.PathLike | None = None):
        if reason not in REJECT_REASONS:
            raise ValueError(f"unknown reject reason {reason!r}; expected one of {REJECT_REASONS}")
        self.reason = reason
        self.detail = detail
        self.path = None if path is None else os.fspath(path)
        prefix = "" if self.path is None else f"{self.path}: "
        super().__init__(f"{prefix}{reason}: {detail}")

    def __reduce__(self):
        # Default exception pickling replays self.args (the message) into __init__; worker pools need this.
        return (type(self), (self.reason, self.detail, self.path))


@dataclass(frozen=True, eq=False)
class Radiograph:
    """One decoded frontal radiograph in display convention (eq=False: arrays have no single truth value)."""

    pixels: np.ndarray
    pixel_spacing_mm: tuple[float, float] | None
    bits_stored: int | None
    photometric: str
    view_position: str | None
    modality: str | None
    transfer_syntax: str | None
    inverted: bool


def read_radiograph(path: str | os.PathLike, *, apply_voi_lut: bool = False, allow_lateral: bool = False,
                    max_pixels: int = 100_000_000) -> Radiograph:
    """Read a DICOM, PNG or JPEG radiograph as float32 display-convention pixels, or raise RadiographError."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(DICOM_MAGIC_OFFSET + 4)
            if head.startswith(PNG_MAGIC) or head.startswith(JPEG_MAGIC):
                handle.seek(0)
                return _read_bitmap(handle.read(), path, max_pixels)
            is_dicom_part10 = head[DICOM_MAGIC_OFFSET:DICOM_MAGIC_OFFSET + 4] == b"DICM"
            if not is_dicom_part10:
                for magic, name in _OTHER_MAGICS:
                    if head.startswith(magic):
                        raise RadiographError("unsupported_format", f"{name} file; only DICOM, PNG and JPEG are read",
                                              path)
            handle.seek(0)
            dataset, pixel_problem = _parse_dicom(handle, path, is_dicom_part10)
    except OSError as error:
        raise RadiographError("unreadable", f"{type(error).__name__}: {error}", path) from error
    _check_dicom_header(dataset, path, allow_lateral, max_pixels, pixel_data_truncated=bool(pixel_problem))
    if pixel_problem:
        raise RadiographError("undecodable_pixels", pixel_problem, path)
    return _read_dicom(dataset, path, apply_voi=apply_voi_lut)


def _forced_read(handle, stop_before_pixels: bool) -> tuple[Dataset | None, str]:
    """dcmread(force=True) from the start; (dataset, "") if it holds DICOM identity elements, else (None, why)."""
    handle.seek(0)
    try:
        dataset = pydicom.dcmread(handle, force=True, stop_before_pixels=stop_before_pixels)
        if any(keyword in dataset for keyword in _DICOM_IDENTITY_KEYWORDS):
            cut = _truncation(dataset)
            return (None, cut) if cut else (dataset, "")
        return None, "no SOP Class, Modality, Rows or Pixel Data element could be read"
    except Exception as error:  # pydicom raises many types on corrupt or truncated input
        return None, f"{type(error).__name__}: {error}"


def _truncation(dataset: Dataset) -> str:
    """Why the file ends inside its last element ("" if it does not): pydicom silently keeps a cut value."""
    last = dataset.get_item(next(reversed(dataset.keys())))  # the raw element: its value is not yet converted
    length, value = getattr(last, "length", None), getattr(last, "value", None)
    if isinstance(value, bytes) and length is not None and length != 0xFFFFFFFF and len(value) < length:
        return f"{_TRUNCATED}: it ends inside element {last.tag} after {len(value)} of its {length} bytes"
    return ""


def _parse_dicom(handle, path, is_dicom_part10: bool) -> tuple[Dataset, str]:
    """Parse DICOM (with or without the Part 10 preamble) -> (dataset, why its Pixel Data is unreadable or "").

    A file cut short inside Pixel Data makes pydicom fail or return an empty dataset; re-reading only the header
    lets the header checks (and a specific undecodable_pixels reason) still apply.
    """
    dataset, why = _forced_read(handle, stop_before_pixels=False)
    pixel_problem = ""
    if dataset is None:
        dataset, header_why = _forced_read(handle, stop_before_pixels=True)
        if dataset is not None:
            pixel_problem = f"Pixel Data could not be read (file truncated?): {why}"
        elif header_why.startswith(_TRUNCATED):
            raise RadiographError("unreadable", header_why, path)
        elif is_dicom_part10:
            raise RadiographError("unreadable", f"DICM marker present but the header does not parse: {why}", path)
        else:
            raise RadiographError("unsupported_format", f"not DICOM (no DICM marker; forced parse: {why}), "
                                                        "not PNG (89 50 4E 47), not JPEG (FF D8 FF)", path)
    meta = getattr(dataset, "file_meta", None)
    if meta is None or "TransferSyntaxUID" not in meta:
        # Pre-Part-10 files (e.g. ACR-NEMA style CR-MONO1-10-chest.dcm) have no meta header; pydicom has
        # already sniffed the encoding, and Implicit VR Little Endian is the DICOM default (PS3.5 10.1).
        implicit, little = dataset.original_encoding
        if little is False:
            syntax = ExplicitVRBigEndian
        elif implicit is False:
            syntax = ExplicitVRLittleEndian
        else:
            syntax = ImplicitVRLittleEndian
        if meta is None:
            dataset.file_meta = meta = FileMetaDataset()
        meta.TransferSyntaxUID = syntax
    return dataset, pixel_problem


def _header_int(dataset: Dataset, keyword: str, default: int | None = None) -> int | None:
    """An integer header value, or `default` when absent or garbage (forced reads keep invalid strings)."""
    try:
        value = dataset.get(keyword)
        return default if value is None or value == "" else int(value)
    except (TypeError, ValueError):
        return default


def _header_str(dataset: Dataset, keyword: str) -> str | None:
    """An upper-cased, stripped string header value, or None when absent or empty."""
    value = dataset.get(keyword)
    if value is None:
        return None
    text = str(value).strip().upper()
    return text or None


def _check_dicom_header(dataset: Dataset, path, allow_lateral: bool, max_pixels: int,
                        pixel_data_truncated: bool = False) -> None:
    """Reject non-images, colour, multi-frame, bad sizes and laterals from the header alone (no decoding)."""
    if "PixelData" not in dataset and not pixel_data_truncated:
        if "FloatPixelData" in dataset or "DoubleFloatPixelData" in dataset:
            raise RadiographError("unsupported_format", "float pixel data (parametric map), not an integer "
                                                        "projection radiograph", path)
        sop = dataset.get("SOPClassUID")
        sop_text = f"SOP class {sop.name}" if sop is not None else "object without SOP Class UID"
        if "Rows" in dataset or "Columns" in dataset:
            raise RadiographError("no_pixel_data", f"{sop_text} has Rows/Columns but no Pixel Data "
                                                   "(7FE0,0010) element (file truncated or header-only)", path)
        raise RadiographError("not_an_image", f"{sop_text} has no Pixel Data and no image attributes", path)
    samples = _header_int(dataset, "SamplesPerPixel", 1)
    photometric = _header_str(dataset, "PhotometricInterpretation")
    if samples != 1 or photometric not in (None, "MONOCHROME1", "MONOCHROME2"):
        raise RadiographError("colour", f"PhotometricInterpretation {photometric} has {samples} samples per "
                                        "pixel; only MONOCHROME1/MONOCHROME2 are greyscale", path)
    if photometric is None:
        raise RadiographError("undecodable_pixels", "PhotometricInterpretation missing: polarity "
                                                    "(MONOCHROME1/2) unknown", path)
    frames = _header_int(dataset, "NumberOfFrames", 1)
    if frames is not None and frames > 1:
        raise RadiographError("multi_frame", f"NumberOfFrames is {frames}; a radiograph has one frame", path)
    rows, columns = _header_int(dataset, "Rows"), _header_int(dataset, "Columns")
    if rows is None or columns is None:
        raise RadiographError("undecodable_pixels", f"Rows={dataset.get('Rows')!r} Columns="
                                                    f"{dataset.get('Columns')!r} are missing or not integers", path)
    _check_size(rows, columns, max_pixels, path)
    view = _header_str(dataset, "ViewPosition")
    if view in LATERAL_VIEWS and not allow_lateral:
        raise RadiographError("lateral_view", f"ViewPosition {view} is a lateral projection", path)


def _check_size(rows: int, columns: int, max_pixels: int, path) -> None:
    """Reject zero-sized and implausibly large images before any pixel buffer is allocated."""
    if rows <= 0 or columns <= 0:
        raise RadiographError("empty_image", f"image is {rows} x {columns} pixels", path)
    if rows > MAX_SIDE_PX or columns > MAX_SIDE_PX or rows * columns > max_pixels:
        raise RadiographError("absurd_dimensions", f"image is {rows} x {columns} pixels (limits: side <= "
                                                   f"{MAX_SIDE_PX}, area <= {max_pixels})", path)


def _stored_range(dataset: Dataset, raw: np.ndarray) -> tuple[float, float]:
    """Smallest and largest representable stored value (BitsStored, PixelRepresentation; PS3.3 C.7.6.3)."""
    bits = _header_int(dataset, "BitsStored") or _header_int(dataset, "BitsAllocated") or raw.dtype.itemsize * 8
    if _header_int(dataset, "PixelRepresentation", 0) == 1:
        return -(2.0 ** (bits - 1)), 2.0 ** (bits - 1) - 1
    return 0.0, 2.0 ** bits - 1


def _lut_range(sequence_item: Dataset) -> tuple[float, float]:
    """Output range of a Modality/VOI LUT: 0 .. 2**bits - 1 from the third LUT Descriptor value (PS3.3 C.11.1.1)."""
    return 0.0, 2.0 ** int(sequence_item.LUTDescriptor[2]) - 1


def _rescale(dataset: Dataset, path) -> tuple[float, float]:
    """(RescaleSlope, RescaleIntercept), each defaulting to identity when absent."""
    try:
        slope = float(dataset.get("RescaleSlope", 1.0) or 1.0)
        intercept = float(dataset.get("RescaleIntercept", 0.0) or 0.0)
    except (TypeError, ValueError) as error:
        raise RadiographError("undecodable_pixels", f"RescaleSlope/Intercept not numeric: {error}", path) from error
    if not (math.isfinite(slope) and math.isfinite(intercept)) or slope == 0:
        raise RadiographError("undecodable_pixels", f"unusable rescale: slope {slope}, intercept {intercept}", path)
    return slope, intercept


def _display_pixels(raw: np.ndarray, dataset: Dataset, apply_voi: bool, invert: bool, path) -> np.ndarray:
    """Modality LUT/rescale, optional VOI, then inversion, producing float32 with at most two full passes.

    Inversion maps the representable output range [lo, hi] of the last applied stage onto itself:
    display = (lo + hi) - value. For 15-bit unsigned CR that is 32767 - stored. It is exact in float32 for
    integer data below 2**24 and independent of the image content (unlike max(image) - image).
    """
    slope, intercept = _rescale(dataset, path)
    modality_lut = dataset.get("ModalityLUTSequence")
    if modality_lut:
        low, high = _lut_range(modality_lut[0])
    else:
        stored_low, stored_high = _stored_range(dataset, raw)
        low, high = sorted((stored_low * slope + intercept, stored_high * slope + intercept))
    if modality_lut or apply_voi:
        # Not the hot path: pydicom implements the LUT and windowing rules (PS3.3 C.11.1, C.11.2) and
        # pydicom's windowing keeps the modality output range, so [low, high] only changes for a VOI LUT.
        try:
            values = dicom_pixels.apply_modality_lut(raw, dataset)
            if apply_voi:
                voi_sequence = dataset.get("VOILUTSequence")
                if voi_sequence:
                    low, high = _lut_range(voi_sequence[0])
                values = dicom_pixels.apply_voi_lut(values, dataset)
        except Exception as error:  # malformed LUT descriptors/data or window values
            raise RadiographError("undecodable_pixels", f"Modality/VOI LUT could not be applied: "
                                                        f"{type(error).__name__}: {error}", path) from error
        pixels = values.astype(np.float32)
        if invert:
            np.subtract(np.float32(low + high), pixels, out=pixels)
        return pixels
    # Rescale and inversion fold into one affine map a*raw + b; pydicom's apply_modality_lut would go via float64.
    scale, offset = (-slope, (low + high) - intercept) if invert else (slope, intercept)
    if scale == -1.0:
        return np.subtract(np.float32(offset), raw, dtype=np.float32)
    if scale == 1.0:
        return np.add(raw, np.float32(offset), dtype=np.float32) if offset else raw.astype(np.float32)
    pixels = np.multiply(raw, np.float32(scale), dtype=np.float32)
    if offset:
        pixels += np.float32(offset)
    return pixels


def _pixel_spacing_mm(dataset: Dataset) -> tuple[float, float] | None:
    """(row, column) spacing from PixelSpacing, else ImagerPixelSpacing; zero, negative or garbage -> None."""
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        try:
            value = dataset.get(keyword)
            spacing = tuple(float(v) for v in value) if value is not None else ()
        except (TypeError, ValueError):
            continue
        if len(spacing) == 2 and all(math.isfinite(v) and v > 0 for v in spacing):
            return spacing
    return None


def _read_dicom(dataset: Dataset, path, apply_voi: bool) -> Radiograph:
    """Decode a header-checked DICOM dataset's pixels and convert them to display convention."""
    syntax = dataset.file_meta.TransferSyntaxUID
    try:
        decoder = dicom_pixels.get_decoder(syntax)
    except NotImplementedError:  # video (MPEG-2/4, HEVC), private or made-up UIDs: nothing can decode them
        known = syntax.name if syntax.is_transfer_syntax else "not a known transfer syntax"
        raise RadiographError("unsupported_transfer_syntax", f"no pixel decoder for {syntax} ({known})",
                              path) from None
    if not decoder.is_available:
        raise RadiographError("unsupported_transfer_syntax", f"{syntax.name} needs a decoder plugin: "
                                                             f"{decoder.missing_dependencies}", path)
    try:
        raw = dataset.pixel_array
    except Exception as error:  # truncated data, bad codestream or a missing plugin all land here
        raise RadiographError("undecodable_pixels", f"{syntax.name}: {type(error).__name__}: {error}",
                              path) from error
    if raw.ndim != 2:
        raise RadiographError("multi_frame" if raw.ndim == 3 else "colour",
                              f"decoded pixel array has shape {raw.shape}, expected rows x columns", path)
    photometric = _header_str(dataset, "PhotometricInterpretation")
    # MONOCHROME1 and Presentation LUT Shape INVERSE each mean "minimum is white". In DX/CR files INVERSE is the
    # required companion of MONOCHROME1 (PS3.3 C.8.11.7), describing the same single inversion, so the two are
    # OR-ed, not XOR-ed (XOR would show conformant MONOCHROME1 + INVERSE files with white lungs).
    invert = photometric == "MONOCHROME1" or _header_str(dataset, "PresentationLUTShape") == "INVERSE"
    pixels = _display_pixels(raw, dataset, apply_voi, invert, path)
    return Radiograph(
        pixels=pixels,
        pixel_spacing_mm=_pixel_spacing_mm(dataset),
        bits_stored=_header_int(dataset, "BitsStored"),
        photometric=photometric,
        view_position=_header_str(dataset, "ViewPosition"),
        modality=_header_str(dataset, "Modality"),
        transfer_syntax=syntax.name,
        inverted=invert,
    )


def _bitmap_size(data: bytes) -> tuple[int, int] | None:
    """(rows, columns) from a PNG IHDR or the first JPEG SOFn segment, read without decoding; None if not found."""
    if data.startswith(PNG_MAGIC):
        if len(data) >= 24 and data[12:16] == b"IHDR":
            width, height = struct.unpack(">II", data[16:24])
            return height, width
        return None
    position = 2
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            return None
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        length = struct.unpack(">H", data[position + 2:position + 4])[0]
        # SOF0..SOF15 carry the frame size; C4 (DHT), C8 (JPG) and CC (DAC) share the range but do not.
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC) and position + 9 <= len(data):
            height, width = struct.unpack(">HH", data[position + 5:position + 9])
            return height, width
        position += 2 + length
    return None


def _read_bitmap(data: bytes, path, max_pixels: int) -> Radiograph:
    """Decode PNG (8/16-bit) or JPEG (upright by its EXIF orientation) with OpenCV, keeping depth; grey stored as
    equal colour channels is accepted."""
    kind = "PNG" if data.startswith(PNG_MAGIC) else "JPEG"
    size = _bitmap_size(data)
    if size is not None:
        _check_size(*size, max_pixels, path)
    # JPEG: decoded upright, as viewers show it (EXIF orientation applied; a scanned or photographed film often
    # carries one); IMREAD_UNCHANGED would ignore it. PNG: unchanged, keeping an alpha channel to check.
    flags = cv2.IMREAD_UNCHANGED if kind == "PNG" else cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flags)
    if image is None:
        raise RadiographError("undecodable_pixels", f"OpenCV could not decode this {kind} ({len(data)} bytes)",
                              path)
    if image.ndim == 3:
        image = _grey_from_channels(image, kind, path)
    _check_size(*image.shape, max_pixels, path)
    return Radiograph(
        pixels=image.astype(np.float32),
        pixel_spacing_mm=None,
        bits_stored=image.dtype.itemsize * 8,
        photometric=kind,
        view_position=None,
        modality=None,
        transfer_syntax=None,
        inverted=False,
    )


def _grey_from_channels(image: np.ndarray, kind: str, path) -> np.ndarray:
    """The single grey plane of an image whose colour channels are identical and alpha (if any) opaque."""
    channels = image.shape[2]
    if channels == 1:
        return image[:, :, 0]
    if channels == 4:
        opaque = np.iinfo(image.dtype).max
        if (image[:, :, 3] != opaque).any():
            raise RadiographError("colour", f"{kind} has a non-opaque alpha channel", path)
    grey = image[:, :, 0]
    for channel in range(1, min(channels, 3)):
        if not np.array_equal(grey, image[:, :, channel]):
            raise RadiographError("colour", f"{kind} has {channels} channels whose values differ (real colour)",
                                  path)
    return grey
