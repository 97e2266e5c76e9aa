"""The bad-input corpus for test_bad_inputs.py: one case per defect, each a file builder plus manifest rows.

Every manifest row says what must become of it: written, or one rejects.csv row with (stage, reason, column).
`prepare_or_crash` is the worker prepare function that kills its process on one file; spawned workers import
it from this module by name (they inherit the test run's import path, which holds tests/).
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
from pydicom.encaps import encapsulate
from pydicom.uid import MPEG2MPML, UID

from bnp_cxr.records.prepare import prepare_row
from bnp_cxr.rejects import Reject
from imaging_cases import BASIC_TEXT_SR_STORAGE, dicom_dataset, pydicom_file, write_dicom

MANIFEST_COLUMNS = ("patient_id", "image_path", "study_datetime", "bnp", "bnpp", "view", "split")
CRASH_NAME = "crash-me.dcm"
WRITTEN = None  # the expectation of a row that must be written
OTHER_IMAGE = "<another file built like this case's>"


@dataclass(frozen=True)
class Row:
    """One manifest row: cells that differ from the defaults, and (stage, reason, column) or WRITTEN."""

    expect: tuple[str, str, str] | None = WRITTEN
    cells: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Case:
    """A defect: `build(folder, name)` writes its file and returns the image_path cell (None: no file)."""

    name: str
    build: Callable[[Path, str], str | None]
    rows: tuple[Row, ...] = (Row(),)


def row(expect: tuple[str, str, str] | None = WRITTEN, **cells) -> Row:
    return Row(expect, cells)


def image(reason: str) -> tuple[str, str, str]:
    return ("image", reason, "image_path")


def manifest(reason: str, column: str) -> tuple[str, str, str]:
    return ("manifest", reason, column)


# ------------------------------------------------------------------------------------------- file builders

def _dicom(folder: Path, name: str, **attributes) -> Path:
    return write_dicom(folder / f"{name}.dcm", dicom_dataset(**attributes))


def _rel(folder: Path, path: Path) -> str:
    return path.relative_to(folder).as_posix()


def good_dicom(folder: Path, name: str) -> str:
    return _rel(folder, _dicom(folder, name))


def crash_file(folder: Path, name: str) -> str:
    """A good DICOM that prepare_or_crash refuses to survive."""
    path = write_dicom(folder / CRASH_NAME, dicom_dataset())
    return _rel(folder, path)


def _bitmap(folder: Path, name: str, extension: str, keep_fraction: float = 1.0) -> str:
    pixels = np.random.default_rng(len(name)).integers(0, 256, (60, 40)).astype(np.uint8)
    data = cv2.imencode(extension, pixels)[1].tobytes()
    path = folder / f"{name}{extension}"
    path.write_bytes(data[:int(len(data) * keep_fraction)])
    return _rel(folder, path)


def good_png(folder: Path, name: str) -> str:
    return _bitmap(folder, name, ".png")


def good_jpeg(folder: Path, name: str) -> str:
    return _bitmap(folder, name, ".jpg")


def truncated_png(folder: Path, name: str) -> str:
    return _bitmap(folder, name, ".png", keep_fraction=0.6)


def truncated_jpeg(folder: Path, name: str) -> str:
    return _bitmap(folder, name, ".jpg", keep_fraction=0.6)


def no_meta_dicom(folder: Path, name: str) -> str:
    """A bare implicit-VR dataset, no preamble, no DICM, no file meta (like CR-MONO1-10-chest.dcm)."""
    return _rel(folder, write_dicom(folder / f"{name}.dcm", dicom_dataset(), file_meta=False))


def no_preamble_dicom(folder: Path, name: str) -> str:
    """A Part 10 file with its 128-byte preamble and DICM marker cut off: the file meta group comes first."""
    path = _dicom(folder, name)
    path.write_bytes(path.read_bytes()[132:])
    return _rel(folder, path)


def wrong_magic_dicom(folder: Path, name: str) -> str:
    """A Part 10 file whose DICM marker is damaged: the preamble then reads as garbage."""
    path = _dicom(folder, name)
    data = path.read_bytes()
    path.write_bytes(data[:128] + b"DICX" + data[132:])
    return _rel(folder, path)


def garbage_dcm(folder: Path, name: str) -> str:
    path = folder / f"{name}.dcm"
    path.write_bytes(np.random.default_rng(7).integers(0, 256, 5000).astype(np.uint8).tobytes())
    return _rel(folder, path)


def truncated_in_pixels(folder: Path, name: str) -> str:
    path = _dicom(folder, name)
    path.write_bytes(path.read_bytes()[:-1000])
    return _rel(folder, path)


def truncated_in_header(folder: Path, name: str) -> str:
    """Cut inside the PhotometricInterpretation value: Rows, Columns and Pixel Data never arrive."""
    path = _dicom(folder, name)
    data = path.read_bytes()
    path.write_bytes(data[:data.index(b"MONOCHROME2") + 4])
    return _rel(folder, path)


def missing_pixel_data(folder: Path, name: str) -> str:
    return _rel(folder, _dicom(folder, name, PixelData=None))


def zero_size(folder: Path, name: str) -> str:
    return _rel(folder, _dicom(folder, name, Rows=0, PixelData=b""))


def absurd_dimensions(folder: Path, name: str) -> str:
    return _rel(folder, _dicom(folder, name, Rows=20000, Columns=20000))


def lateral_dicom(folder: Path, name: str) -> str:
    return _rel(folder, _dicom(folder, name, ViewPosition="LL"))


def _syntax(folder: Path, name: str, syntax: UID) -> str:
    ds = dicom_dataset()
    ds.file_meta.TransferSyntaxUID = syntax
    # A compressed syntax needs encapsulated frames; the bytes are a stand-in MPEG-2 sequence header.
    ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" + bytes(64)]) if syntax.is_transfer_syntax else ds.PixelData
    path = folder / f"{name}.dcm"
    ds.save_as(path, enforce_file_format=True, implicit_vr=False, little_endian=True)
    return _rel(folder, path)


def mpeg2_syntax(folder: Path, name: str) -> str:
    return _syntax(folder, name, MPEG2MPML)


def made_up_syntax(folder: Path, name: str) -> str:
    return _syntax(folder, name, UID("1.2.826.0.1.3680043.9.9999.42"))


def _pydicom_copy(test_file: str) -> Callable[[Path, str], str]:
    def build(folder: Path, name: str) -> str:
        path = folder / f"{name}.dcm"
        shutil.copyfile(pydicom_file(test_file), path)
        return _rel(folder, path)
    return build


def synthetic_sr(folder: Path, name: str) -> str:
    """A Basic Text SR header: no Rows, no Pixel Data."""
    return _rel(folder, _dicom(folder, name, PixelData=None, Rows=None, Columns=None,
                               SOPClassUID=BASIC_TEXT_SR_STORAGE, Modality="SR"))


def no_file(folder: Path, name: str) -> None:
    return None


def absolute_inside(folder: Path, name: str) -> str:
    """An absolute path that points inside the manifest's folder (archives list files this way)."""
    return str(_dicom(folder, name).absolute())


# ----------------------------------------------------------------------------------------------- the corpus

CASES = (
    Case("good_dicom", good_dicom),
    Case("good_png", good_png),
    Case("good_jpeg", good_jpeg),
    Case("no_meta_dicom", no_meta_dicom),
    Case("no_preamble_dicom", no_preamble_dicom),
    Case("absolute_path_inside_folder", absolute_inside),
    Case("crash_file", crash_file),  # good: only prepare_or_crash makes it a decoder_crashed reject
    Case("truncated_dicom_pixels", truncated_in_pixels, (row(image("undecodable_pixels")),)),
    Case("truncated_dicom_header", truncated_in_header, (row(image("unreadable")),)),
    Case("wrong_magic", wrong_magic_dicom, (row(image("unsupported_format")),)),
    Case("garbage_named_dcm", garbage_dcm, (row(image("unsupported_format")),)),
    Case("missing_pixel_data", missing_pixel_data, (row(image("no_pixel_data")),)),
    Case("zero_size", zero_size, (row(image("empty_image")),)),
    Case("colour", _pydicom_copy("SC_rgb.dcm"), (row(image("colour")),)),
    Case("multi_frame", _pydicom_copy("emri_small.dcm"), (row(image("multi_frame")),)),
    Case("mpeg2_transfer_syntax", mpeg2_syntax, (row(image("unsupported_transfer_syntax")),)),
    Case("made_up_transfer_syntax", made_up_syntax, (row(image("unsupported_transfer_syntax")),)),
    Case("absurd_dimensions", absurd_dimensions, (row(image("absurd_dimensions")),)),
    Case("structured_report", _pydicom_copy("test-SR.dcm"), (row(image("not_an_image")),)),
    Case("synthetic_sr", synthetic_sr, (row(image("not_an_image")),)),
    Case("lateral_in_dicom_header", lateral_dicom, (row(image("lateral_view")),)),
    Case("truncated_png", truncated_png, (row(image("undecodable_pixels")),)),
    Case("truncated_jpeg", truncated_jpeg, (row(image("undecodable_pixels")),)),
    Case("missing_path", no_file, (row(manifest("missing_path", "image_path"), image_path=""),)),
    Case("nonexistent_file", no_file, (row(manifest("file_not_found", "image_path"), image_path="img/nope.dcm"),)),
    Case("path_escaping_folder", no_file, (row(manifest("path_outside_root", "image_path"),
                                               image_path="../../etc/passwd"),)),
    Case("absolute_path_outside_folder", no_file, (row(manifest("absolute_path", "image_path"),
                                                       image_path="/etc/passwd"),)),
    Case("missing_patient_id", good_dicom, (row(manifest("missing_patient_id", "patient_id"), patient_id=""),)),
    Case("non_numeric_bnp", good_dicom, (row(manifest("bad_lab_value", "bnp"), bnp="high"),)),
    Case("negative_bnpp", good_dicom, (row(manifest("bad_lab_value", "bnpp"), bnpp="-40"),)),
    Case("zero_bnpp", good_dicom, (row(manifest("bad_lab_value", "bnpp"), bnpp="0"),)),
    Case("no_lab_value", good_dicom, (row(manifest("no_label", "bnp,bnpp"), bnpp=""),)),
    Case("unparseable_date", good_dicom, (row(manifest("bad_datetime", "study_datetime"),
                                              study_datetime="31/02/2020 25:61"),)),
    Case("lateral_in_manifest", good_dicom, (row(manifest("lateral_view", "view"), view="LL"),)),
    Case("unknown_split", good_dicom, (row(manifest("bad_split", "split"), split="holdout"),)),
    Case("duplicate_row", good_png, (row(), row(manifest("duplicate_row", "image_path")))),
    Case("image_of_two_patients", good_png, (row(manifest("conflicting_patient", "patient_id")),
                                             row(manifest("conflicting_patient", "patient_id"),
                                                 patient_id="another-patient"))),
    Case("same_image_different_labs", good_png, (row(manifest("conflicting_duplicate", "bnpp")),
                                                 row(manifest("conflicting_duplicate", "bnpp"), bnpp="35"))),
    Case("patient_in_two_splits", good_png, (row(manifest("conflicting_split", "split"), split="train"),
                                             row(manifest("conflicting_split", "split"), split="test",
                                                 image_path=OTHER_IMAGE))),
)


@dataclass(frozen=True)
class Corpus:
    """A built corpus: the manifest and, per case, its manifest row numbers (CSV line, header = 1)."""

    folder: Path
    manifest: Path
    rows_of: dict[str, list[int]]
    expect: dict[int, tuple[str, str, str] | None]


def build_corpus(folder: Path, cases=CASES) -> Corpus:
    """Write every case's files under folder/img and one manifest.csv (inline labs) naming them all."""
    (folder / "img").mkdir(parents=True)
    lines, rows_of, expect = [",".join(MANIFEST_COLUMNS)], {}, {}
    for case in cases:
        image_path = case.build(folder / "img", case.name)
        image_path = "" if image_path is None else (image_path if os.path.isabs(image_path) else f"img/{image_path}")
        defaults = {"patient_id": case.name, "image_path": image_path, "study_datetime": "2020-01-01T10:00",
                    "bnp": "", "bnpp": "900", "view": "PA", "split": ""}
        for spec in case.rows:
            cells = {**defaults, **spec.cells}
            if cells["image_path"] == OTHER_IMAGE:
                cells["image_path"] = f"img/{case.build(folder / 'img', case.name + '-other')}"
            lines.append(",".join(cells[column] for column in MANIFEST_COLUMNS))
            number = len(lines)  # CSV line number: the header is line 1
            rows_of.setdefault(case.name, []).append(number)
            expect[number] = spec.expect
    (folder / "manifest.csv").write_text("\n".join(lines) + "\n")
    return Corpus(folder, folder / "manifest.csv", rows_of, expect)


# ---------------------------------------------------------------- labs table: (test, value, lab_datetime, expect)

STUDY_TIME = "2020-01-01T10:00"
LAB_CASES = {  # patient: (their lab rows, what becomes of their one radiograph)
    "lab_good": ((("BNPP", "900", "2020-01-01T09:00", WRITTEN),), WRITTEN),
    "lab_non_numeric": ((("BNPP", "high", "2020-01-01T09:00", ("labs", "bad_lab_row", "value")),),
                        manifest("no_label", "bnp,bnpp")),
    "lab_negative": ((("BNP", "-12", "2020-01-01T09:00", ("labs", "bad_lab_row", "value")),),
                     manifest("no_label", "bnp,bnpp")),
    "lab_zero": ((("BNPP", "0", "2020-01-01T09:00", ("labs", "bad_lab_row", "value")),),
                 manifest("no_label", "bnp,bnpp")),
    "lab_bad_date": ((("BNPP", "900", "the day before", ("labs", "bad_lab_row", "lab_datetime")),),
                     manifest("no_label", "bnp,bnpp")),
    "lab_unknown_test": ((("troponin", "900", "2020-01-01T09:00", ("labs", "bad_lab_row", "test")),),
                         manifest("no_label", "bnp,bnpp")),
    # One patient, one test, one time, two results: neither can be trusted.
    "lab_conflicting": ((("BNPP", "900", "2020-01-01T09:00", ("labs", "conflicting_lab", "value")),
                         ("NT-proBNP", "45", "2020-01-01T09:00", ("labs", "conflicting_lab", "value"))),
                        manifest("no_label", "bnp,bnpp")),
    # A bad BNPP row does not spoil the patient's good BNP.
    "lab_one_bad_one_good": ((("BNPP", "n/a", "2020-01-01T09:00", ("labs", "bad_lab_row", "value")),
                              ("BNP", "250", "2020-01-01T11:00", WRITTEN)), WRITTEN),
}


def build_labs_corpus(folder: Path) -> tuple[Path, Path, dict[tuple[str, int], tuple[str, str, str] | None]]:
    """A manifest of good images plus a labs table holding the LAB_CASES; expectations by (file name, row)."""
    (folder / "img").mkdir(parents=True)
    manifest_lines, labs_lines = ["patient_id,image_path,study_datetime"], ["patient_id,lab_datetime,test,value"]
    expect = {}
    for patient, (labs, image_expect) in LAB_CASES.items():
        manifest_lines.append(f"{patient},img/{good_png(folder / 'img', patient)},{STUDY_TIME}")
        expect[("manifest.csv", len(manifest_lines))] = image_expect
        for test, value, when, lab_expect in labs:
            labs_lines.append(f"{patient},{when},{test},{value}")
            if lab_expect is not WRITTEN:
                expect[("labs.csv", len(labs_lines))] = lab_expect
    (folder / "manifest.csv").write_text("\n".join(manifest_lines) + "\n")
    (folder / "labs.csv").write_text("\n".join(labs_lines) + "\n")
    return folder / "manifest.csv", folder / "labs.csv", expect


def prepare_or_crash(row, sizes: tuple[int, ...], allow_lateral: bool = False):
    """prepare_row, except that a worker process kills itself (SIGSEGV, as a codec bug would) on CRASH_NAME."""
    if Path(row.abs_path).name == CRASH_NAME:
        if multiprocessing.parent_process() is None:
            raise RuntimeError("prepare_or_crash refuses to kill the main process; use workers >= 1")
        os.kill(os.getpid(), signal.SIGSEGV)
    return prepare_row(row, sizes, allow_lateral)


HEAVY_MODULES = ("tensorflow", "keras", "bnp_cxr.records.writer")  # rows unpickle through data.manifest (pandas)


def prepare_reporting_imports(row, sizes: tuple[int, ...], allow_lateral: bool = False) -> Reject:
    """A prepare function that rejects every row, naming the HEAVY_MODULES its process has loaded ("none")."""
    loaded = [name for name in HEAVY_MODULES if name in sys.modules]
    return Reject(stage="image", reason="imports", column="image_path", detail=" ".join(loaded) or "none")


def square_or_exit(number: int) -> int:
    """number ** 2, except that 3 and 4 end their worker process with os._exit (no cleanup, no exception)."""
    if number in (3, 4):
        if multiprocessing.parent_process() is None:
            raise RuntimeError("square_or_exit refuses to end the main process; use workers >= 1")
        os._exit(3)
    return number * number
