"""Writing phantom radiographs as real DICOM files: CR / DX, MONOCHROME1 / 2, 12-16 bits, several syntaxes.

UIDs are derived from the cohort seed and image index (pydicom generate_uid with entropy sources), and
no timestamp of the run enters a file, so a cohort is byte-identical across runs. Compression uses the
pylibjpeg plugins (pylibjpeg-openjpeg for JPEG 2000, pylibjpeg-rle for RLE Lossless).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    JPEG2000,
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
    generate_uid,
)

TRANSFER_SYNTAXES = {
    "jpeg2000_lossless": JPEG2000Lossless,
    "jpeg2000_lossy": JPEG2000,
    "rle_lossless": RLELossless,
    "explicit_vr_le": ExplicitVRLittleEndian,
    "implicit_vr_le": ImplicitVRLittleEndian,
}
SOP_CLASSES = {"CR": ComputedRadiographyImageStorage, "DX": DigitalXRayImageStorageForPresentation}
# Display values of the renderer's nominal range map onto this share of the stored range.
DISPLAY_RANGE = (-0.08, 1.35)
JPEG2000_LOSSY_RATIO = 12.0


@dataclass(frozen=True)
class Acquisition:
    """How an image is encoded: these choices exercise every path of a DICOM reader."""

    modality: str  # CR or DX
    photometric: str  # MONOCHROME1 (stored inverted) or MONOCHROME2
    bits_stored: int  # 12, 14 or 16 (BitsAllocated 16)
    transfer_syntax: str  # key of TRANSFER_SYNTAXES
    rescale_slope: float  # modality value = stored * slope + intercept
    rescale_intercept: float
    has_rescale: bool  # whether the header carries RescaleSlope / RescaleIntercept at all
    stored_low: float  # share of the stored range where DISPLAY_RANGE[0] lands (exposure)
    stored_high: float
    spacing_tags: str  # "PixelSpacing", "ImagerPixelSpacing" or "both"


@dataclass(frozen=True)
class Identity:
    """Who and when: synthetic patient and study attributes written to the header."""

    patient_id: str
    patient_name: str
    character_set: str  # "" (ASCII default), "ISO_IR 100" (Latin-1) or "ISO_IR 192" (UTF-8)
    patient_sex: str
    birth_date: str  # YYYYMMDD
    study_datetime: datetime
    view_position: str
    accession: str


def to_stored(display: np.ndarray, acquisition: Acquisition) -> np.ndarray:
    """Display-convention float image -> stored uint16 values (inverted for MONOCHROME1)."""
    max_value = (1 << acquisition.bits_stored) - 1
    low, high = DISPLAY_RANGE
    unit = (display - low) / (high - low)
    stored = (acquisition.stored_low + (acquisition.stored_high - acquisition.stored_low) * unit) * max_value
    stored = np.clip(np.rint(stored), 0, max_value).astype(np.uint16)
    if acquisition.photometric == "MONOCHROME1":
        stored = (max_value - stored).astype(np.uint16)
    return stored


def _uid(seed: int, *parts: object) -> str:
    return generate_uid(entropy_srcs=["bnp-cxr-phantom", str(seed), *map(str, parts)])


def build_dataset(stored: np.ndarray, acquisition: Acquisition, identity: Identity, pixel_spacing_mm: float,
                  seed: int, index: int, burned_in_annotation: bool) -> Dataset:
    """A complete DICOM dataset (file meta included) holding the uncompressed stored pixels."""
    sop_class = SOP_CLASSES[acquisition.modality]
    sop_instance = _uid(seed, "image", index)
    ds = Dataset()
    ds.file_meta = _file_meta(sop_class, sop_instance)
    if identity.character_set:
        ds.SpecificCharacterSet = identity.character_set
    when = identity.study_datetime
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop_instance
    ds.StudyInstanceUID = _uid(seed, "study", identity.patient_id, when.isoformat())
    ds.SeriesInstanceUID = _uid(seed, "series", index)
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = when.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = when.strftime("%H%M%S")
    ds.AccessionNumber = identity.accession
    ds.Modality = acquisition.modality
    ds.Manufacturer = "bnp-cxr phantom"
    ds.InstitutionName = "Synthetic Phantom Hospital"
    ds.StudyDescription = "XR CHEST 1 VIEW"
    ds.PatientName = identity.patient_name
    ds.PatientID = identity.patient_id
    ds.PatientBirthDate = identity.birth_date
    ds.PatientSex = identity.patient_sex
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = identity.view_position
    ds.PatientOrientation = ["L", "F"]  # columns run to the patient's left, rows to the feet
    ds.StudyID = identity.accession[-6:]
    ds.SeriesNumber, ds.InstanceNumber = 1, 1
    if acquisition.modality == "DX":
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.ImageType = ["DERIVED", "PRIMARY"]
    else:
        ds.ImageType = ["ORIGINAL", "PRIMARY"]
    _set_image_pixels(ds, stored, acquisition, pixel_spacing_mm)
    ds.BurnedInAnnotation = "YES" if burned_in_annotation else "NO"
    return ds


def _file_meta(sop_class: str, sop_instance: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = _uid(0, "implementation")
    meta.ImplementationVersionName = "BNPCXR_PHANTOM1"
    return meta


def _set_image_pixels(ds: Dataset, stored: np.ndarray, acquisition: Acquisition, pixel_spacing_mm: float) -> None:
    """The image pixel, spacing, rescale and VOI window attributes, and the uncompressed pixel data."""
    spacing = [f"{pixel_spacing_mm:.6g}", f"{pixel_spacing_mm:.6g}"]
    if acquisition.spacing_tags in ("PixelSpacing", "both"):
        ds.PixelSpacing = spacing
    if acquisition.spacing_tags in ("ImagerPixelSpacing", "both"):
        ds.ImagerPixelSpacing = spacing
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = acquisition.photometric
    ds.Rows, ds.Columns = stored.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, acquisition.bits_stored, acquisition.bits_stored - 1
    ds.PixelRepresentation = 0
    if acquisition.has_rescale:
        ds.RescaleSlope = f"{acquisition.rescale_slope:g}"
        ds.RescaleIntercept = f"{acquisition.rescale_intercept:g}"
        ds.RescaleType = "US"
    max_value = (1 << acquisition.bits_stored) - 1
    centre = 0.5 * max_value * acquisition.rescale_slope + acquisition.rescale_intercept
    ds.WindowCenter = f"{centre:.1f}"
    ds.WindowWidth = f"{0.9 * max_value * acquisition.rescale_slope:.1f}"
    ds.PixelData = stored.tobytes()


def write_dicom(path: Path, ds: Dataset, stored: np.ndarray, transfer_syntax: str) -> None:
    """Encode the pixels with the requested transfer syntax and write a DICOM file with file meta."""
    uid = TRANSFER_SYNTAXES[transfer_syntax]
    if uid == JPEG2000:
        ds.compress(uid, stored, encoding_plugin="pylibjpeg", generate_instance_uid=False,
                    j2k_cr=[JPEG2000_LOSSY_RATIO])
        ds.LossyImageCompression = "01"
        ds.LossyImageCompressionRatio = f"{JPEG2000_LOSSY_RATIO:g}"
        ds.LossyImageCompressionMethod = "ISO_15444_1"
    elif uid.is_compressed:
        ds.compress(uid, stored, encoding_plugin="pylibjpeg", generate_instance_uid=False)
    else:
        ds.file_meta.TransferSyntaxUID = uid
    ds.save_as(path, enforce_file_format=True)


def read_display(path: Path) -> np.ndarray:
    """Decode a phantom DICOM to display convention (rescaled, MONOCHROME1 inverted), float32."""
    ds = pydicom.dcmread(path)
    pixels = ds.pixel_array.astype(np.float32)
    slope, intercept = float(getattr(ds, "RescaleSlope", 1.0)), float(getattr(ds, "RescaleIntercept", 0.0))
    pixels = pixels * slope + intercept
    return -pixels if ds.PhotometricInterpretation == "MONOCHROME1" else pixels
