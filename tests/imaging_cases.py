"""Builders for small synthetic radiograph files used by test_imaging.py (DICOM via pydicom, PNG/JPEG via cv2)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

SHARED_DICOM = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "dicom"
CR_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
BASIC_TEXT_SR_STORAGE = "1.2.840.10008.5.1.4.1.1.88.11"
BITS_STORED = 12
STORED_MAX = 2 ** BITS_STORED - 1


def shared_dicom(name: str) -> Path:
    """Path of a file in ../shared/data/dicom, skipping the test when the shared data is absent."""
    path = SHARED_DICOM / name
    if not path.is_file():
        pytest.skip(f"shared test data not present: {path}")
    return path


def pydicom_file(name: str) -> str:
    """Path of a pydicom / pydicom-data test file, skipping (never downloading) when it is not installed."""
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"{name} not installed (pip install pydicom-data)")
    return path


def stored_image(rows: int = 64, columns: int = 48, seed: int = 0, signed: bool = False) -> np.ndarray:
    """A non-square 12-bit test image spanning the whole stored range, so inversion errors cannot hide."""
    rng = np.random.default_rng(seed)
    if signed:
        values = rng.integers(-(STORED_MAX + 1) // 2, (STORED_MAX + 1) // 2, (rows, columns))
        values.flat[:2] = (-(STORED_MAX + 1) // 2, (STORED_MAX - 1) // 2)
        return values.astype(np.int16)
    values = rng.integers(0, STORED_MAX + 1, (rows, columns))
    values.flat[:2] = (0, STORED_MAX)
    return values.astype(np.uint16)


def dicom_dataset(pixels: np.ndarray | None = None, **attributes) -> Dataset:
    """A minimal single-frame MONOCHROME2 CR dataset; keyword attributes override, None deletes one."""
    if pixels is None:
        pixels = stored_image()
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CR_STORAGE
    ds.SOPClassUID = CR_STORAGE
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.Modality = "CR"
    ds.ViewPosition = "PA"
    ds.Rows, ds.Columns = pixels.shape[:2]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = BITS_STORED
    ds.HighBit = BITS_STORED - 1
    ds.PixelRepresentation = int(np.issubdtype(pixels.dtype, np.signedinteger))
    ds.PixelData = pixels.tobytes()
    for keyword, value in attributes.items():
        if value is None:
            if keyword in ds:
                delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    return ds


def write_dicom(path: Path, ds: Dataset, transfer_syntax=None, file_meta: bool = True) -> Path:
    """Save `ds` (compressing to `transfer_syntax` if given); file_meta=False writes a bare implicit-VR dataset."""
    if transfer_syntax is not None:
        ds.compress(transfer_syntax)
    if file_meta:
        ds.save_as(path, enforce_file_format=True)
    else:
        del ds.file_meta
        ds.save_as(path, implicit_vr=True, little_endian=True)
    return path


def implicit_syntax_name() -> str:
    """Name the reader reports for a file without a meta header."""
    return ImplicitVRLittleEndian.name


def raw_pixels(path) -> np.ndarray:
    """Stored values straight from pydicom, for comparisons against the reader (meta-less files: implicit LE)."""
    ds = pydicom.dcmread(path, force=True)
    if "TransferSyntaxUID" not in ds.file_meta:
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    return ds.pixel_array


def jpegls_near(path) -> int:
    """The NEAR (maximum absolute error) parameter from the first JPEG-LS scan header of a DICOM file."""
    from pydicom.encaps import generate_frames

    ds = pydicom.dcmread(path)
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    sos = frame.find(b"\xff\xda")
    components = frame[sos + 4]
    # SOS: marker(2) length(2) Ns(1) then (Ci, Tmi) per component, then NEAR (ISO 14495-1 C.2.3).
    return frame[sos + 5 + 2 * components]
