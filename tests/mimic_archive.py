"""A mini-MIMIC in the published schemas: MIMIC-CXR-JPG or DICOM tree + CSVs, MIMIC-IV hosp labevents / d_labitems.

`write_mini_mimic` plants the traps of the real files (shifted 22nd-century dates, StudyTime floats without
leading zeros or fraction, censored and de-identified lab values, several labs and radiographs per patient,
lateral and odd views, listed images missing on disk, a patient in two official splits, a tie between two
labs) and returns what each image and lab row should become, so tests check every count of flow.json.
"""

from __future__ import annotations

import csv
import gzip
import io
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np

from bnp_cxr.data.sources.mimic import schema

N_PATIENTS = 50
CONFLICT_PATIENT = 48  # two studies, PA + AP each: the official split puts its images in train and test
NTPROBNP, BNP_ITEM = schema.NTPROBNP_ITEMID, 50800
DISTRACTORS = ((50912, "Creatinine"), (50971, "Potassium"), (51006, "Urea Nitrogen"))
D_LABITEMS = ((NTPROBNP, "NTproBNP", "Blood", "Chemistry"), (BNP_ITEM, "BNP", "Blood", "Chemistry"),
              *((itemid, label, "Blood", "Chemistry") for itemid, label in DISTRACTORS),
              (51277, "RDW", "Blood", "Hematology"))
# StudyTime as the metadata CSV stores it -> the time it means.
TIMES = (("4512.0", (0, 45, 12, 0)), ("213014.531", (21, 30, 14, 531000)), ("93000", (9, 30, 0, 0)),
         ("101530.1", (10, 15, 30, 100000)), ("735", (0, 7, 35, 0)), ("120000.0", (12, 0, 0, 0)))
BAD_TIMES = ("", "256100.0")  # no time; hour 25
# Lab scenarios per study: (item, hours from the study, value, valuenum, valueuom) and the expected pairing
# {test: (value, censored)}; an empty pairing means no usable lab within +-24 h.
OTHER_UNIT = "ng/mL"  # -> unit_not_pg_ml
SCENARIOS = (
    ([("BNPP", 2, "850", "850", "pg/mL")], {"BNPP": (850.0, 0)}, "positive"),
    ([("BNPP", -5, "<50", "", "pg/mL")], {"BNPP": (50.0, -1)}, "negative"),
    ([("BNPP", 20, ">35000", "35000", "pg/mL")], {"BNPP": (35000.0, 1)}, "positive"),
    ([("BNPP", 25, "700", "700", "pg/mL")], {}, ""),
    ([("BNPP", 1, "___", "", "pg/mL"), ("BNPP", -23, "300", "300", "pg/mL")], {"BNPP": (300.0, 0)}, "negative"),
    ([("BNPP", -3, "200", "200", "pg/mL"), ("BNPP", 3, "900", "900", "pg/mL")], {"BNPP": (200.0, 0)}, "negative"),
    ([("BNP", 4, "150", "150", "pg/mL")], {"BNP": (150.0, 0)}, "positive"),
    ([], {}, ""),
    ([("BNPP", 1, "", "", "")], {}, ""),
    ([("BNPP", 2, "HEMOLYZED", "", ""), ("BNP", -2, "80", "80", "pg/mL")], {"BNP": (80.0, 0)}, "negative"),
    ([("BNPP", 1, "450", "450", OTHER_UNIT), ("BNPP", 10, "3000", "3000", "pg/mL")], {"BNPP": (3000.0, 0)}, "positive"),
    ([("BNPP", 1, "<500", "", "pg/mL")], {"BNPP": (500.0, -1)}, "unknown"),
)
TIE_SCENARIO = 5  # equidistant labs 3 h before and after (its studies are at TIMES[5], whole seconds)
UNUSABLE = {"___": "deidentified_value", "": "empty_value", "HEMOLYZED": "bad_value"}  # by value
CHEXPERT_CYCLE = ("1.0", "0.0", "-1.0", "")
CHEXPERT_SOURCE = ("Edema", "Cardiomegaly", "Pleural Effusion")
EXPECTED_CELL = {"1.0": "1", "0.0": "0", "-1.0": "", "": ""}


@dataclass
class PlantedImage:
    """One listed image and what the builder should make of it."""

    dicom_id: str
    subject_id: str
    study_id: str
    view: str
    path: str
    fate: str  # with_lab, no_lab, lateral, other_view, bad_study_datetime, missing_image, duplicate_image
    official_split: str
    study_datetime: datetime | None
    labs: dict  # {test: (value, censored)} it should be paired with
    positivity: str  # positive / negative / unknown, or '' without a lab
    scenario: int
    day: datetime  # the study's (shifted) date
    time_text: str  # StudyTime as the metadata CSV spells it
    chexpert: dict = field(default_factory=dict)  # the study's CheXpert cells as written; empty: no row
    findings: dict = field(default_factory=dict)  # {finding column: '1' / '0' / ''} the manifest should carry


@dataclass
class MiniMimic:
    """What write_mini_mimic wrote and planted."""

    cxr: Path
    iv: Path
    images: list[PlantedImage]
    labs: list[dict] = field(default_factory=list)  # every labevents row with 'subject_id', 'itemid', 'fate'
    conflict_subject: str = ""  # the patient in two official splits
    dates: list[str] = field(default_factory=list)  # every date written, as the files spell them

    @property
    def identifiers(self) -> set[str]:
        """Every MIMIC identifier and date written: none may reach records, summaries or run folders."""
        return ({image.subject_id for image in self.images} | {image.study_id for image in self.images}
                | {image.dicom_id for image in self.images} | set(self.dates))


def _gz_csv(path: Path, columns, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(rows)
    path.write_bytes(gzip.compress(text.getvalue().encode("utf-8"), mtime=0))


def _pixels(rng: np.random.Generator, level: float) -> np.ndarray:
    yy, xx = np.mgrid[:72, :64]
    image = rng.normal(90, 12, (72, 64)) + 120 * level * ((yy - 40) ** 2 + (xx - 30) ** 2 < 150)
    return np.clip(image, 0, 255).astype(np.uint8)


def _write_image(path: Path, pixels: np.ndarray, image: PlantedImage, time_text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".jpg":
        import cv2

        cv2.imwrite(str(path), pixels)
        return
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[image.dicom_id])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.PatientID, ds.StudyID, ds.Modality = image.subject_id, image.study_id, "DX"
    ds.ViewPosition, ds.StudyDate = image.view, f"{image.day:%Y%m%d}"
    with warnings.catch_warnings():  # an invalid TM is the trap planted here
        warnings.simplefilter("ignore", UserWarning)
        ds.StudyTime = f"{image.study_datetime:%H%M%S.%f}" if image.study_datetime else time_text
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = pixels.tobytes()
    ds.save_as(path, enforce_file_format=True)


def _study_images(rng, subject: str, study: str, k: int, s: int, counter: list[int]) -> list[tuple[str, str]]:
    """(view, trap) of each image listed for a study: frontal images, a lateral on even patients, odd views."""
    views = [("PA", "")] + ([("AP", "")] if k % 4 == 0 else []) + ([("LATERAL", "lateral")] if k % 2 == 0 else [])
    views += [("LL", "lateral")] if k % 7 == 3 else []
    views += [(("", "AP AXIAL", "LAO")[k % 3], "other_view")] if k % 5 == 1 else []
    planted = []
    for view, trap in views:
        counter[0] += 1
        if not trap and counter[0] % 9 == 0:
            trap = "missing_image"
        planted.append((view, trap))
    return planted


def _lab_rows(subject: str, when: datetime, scenario: int, labs: list[dict]) -> None:
    """labevents rows of one study's lab scenario, plus distractor items, each with the fate planted."""
    entries, _, _ = SCENARIOS[scenario]
    for test, hours, value, valuenum, unit in entries:
        fate = "unit_not_pg_ml" if unit == OTHER_UNIT else UNUSABLE.get(value, "usable")
        labs.append({"subject_id": subject, "itemid": NTPROBNP if test == "BNPP" else BNP_ITEM, "test": test,
                     "charttime": when + timedelta(hours=hours), "value": value, "valuenum": valuenum,
                     "valueuom": unit, "fate": fate})
    for index, (itemid, _) in enumerate(DISTRACTORS):
        labs.append({"subject_id": subject, "itemid": itemid, "test": "", "charttime": when + timedelta(hours=index),
                     "value": "1.1", "valuenum": "1.1", "valueuom": "mg/dL", "fate": "distractor"})


def _plan_patient(rng, k: int, study_index: int, counter: list[int], images: list, labs: list) -> int:
    """Plant one patient's studies, images and labs; returns the next study index."""
    subject = str(10_000_032 + 7_919 * k)
    conflict = k == CONFLICT_PATIENT
    official = "train" if k % 10 < 7 else "validate" if k % 10 < 9 else "test"
    for s in range(2 if k % 3 == 0 else 1):
        study = str(50_000_017 + 104_729 * study_index)
        day = datetime(2180, 1, 1) + timedelta(days=30 * k + 12 * s)
        if study_index % 17 == 5:
            time_text, when = BAD_TIMES[(study_index // 17) % 2], None
        else:
            time_text, (hour, minute, second, micro) = TIMES[study_index % len(TIMES)]
            when = day.replace(hour=hour, minute=minute, second=second, microsecond=micro)
        scenario = 7 if conflict else study_index % len(SCENARIOS)
        _, paired, state = SCENARIOS[scenario]
        _lab_rows(subject, when or day, scenario, labs)
        cells = {} if study_index % 6 == 4 else {  # CheXpert cells as written; study 4, 10, ... has no row
            label: CHEXPERT_CYCLE[(study_index + j) % 4] for j, label in enumerate(CHEXPERT_SOURCE)}
        for number, (view, trap) in enumerate(_study_images(rng, subject, study, k, s, counter)):
            dicom_id = "-".join(f"{int(rng.integers(0, 2**32)):08x}" for _ in range(5))
            fate = (trap if trap in ("lateral", "other_view") else "bad_study_datetime" if when is None
                    else trap or ("with_lab" if paired else "no_lab"))
            split = ("train", "test")[number % 2] if conflict else official
            images.append(PlantedImage(
                dicom_id, subject, study, view, schema.image_path(subject, study, dicom_id, "jpg"), fate, split,
                when, paired, state if paired else "", scenario, day, time_text,
                chexpert=cells, findings={schema.CHEXPERT_LABELS[label]: EXPECTED_CELL[cell]
                                          for label, cell in cells.items()}))
        study_index += 1
    return study_index


def plan_mini_mimic(seed: int = 0) -> MiniMimic:
    """The planted images and labs (nothing written): patients, studies, traps and what each should become."""
    rng = np.random.default_rng(seed)
    images, labs, counter, study_index = [], [], [0], 0
    for k in range(N_PATIENTS):
        study_index = _plan_patient(rng, k, study_index, counter, images, labs)
    first = next(image for image in images if image.fate == "with_lab")
    duplicate = PlantedImage(**{**vars(first), "fate": "duplicate_image"})
    images.insert(images.index(first) + 1, duplicate)
    for k in range(10):  # NT-proBNP results of patients without radiographs
        labs.append({"subject_id": str(19_000_011 + 313 * k), "itemid": NTPROBNP, "test": "BNPP",
                     "charttime": datetime(2181, 3, 1) + timedelta(days=k), "value": "999", "valuenum": "999",
                     "valueuom": "pg/mL", "fate": "no_radiograph"})
    dates = sorted({f"{image.day:%Y%m%d}" for image in images} | {f"{image.day:%Y-%m-%d}" for image in images})
    return MiniMimic(Path(), Path(), images, labs, str(10_000_032 + 7_919 * CONFLICT_PATIENT), dates)


METADATA_FIXED = {"PerformedProcedureStepDescription": "CHEST (PA AND LAT)", "Rows": "72", "Columns": "64",
                  "ProcedureCodeSequence_CodeMeaning": "CHEST (PA AND LAT)",
                  "ViewCodeSequence_CodeMeaning": "postero-anterior", "PatientOrientationCodeSequence_CodeMeaning":
                  "Erect"}


def _write_cxr(mini: MiniMimic, suffix: str, with_metadata: bool, rng) -> None:
    """The image tree and the CXR CSVs (metadata, split, CheXpert; the record list for DICOM)."""
    listed, studies = [], {}
    for image in mini.images:
        path = image.path.replace(".jpg", f".{suffix}")
        if image.fate not in ("missing_image", "duplicate_image"):
            pixels = _pixels(rng, {"positive": 1.0, "negative": 0.0}.get(image.positivity, 0.5))
            _write_image(mini.cxr / path, pixels, image, image.time_text)
        listed.append((image, path))
        studies.setdefault((image.subject_id, image.study_id), image.chexpert)
    if with_metadata:
        _gz_csv(mini.cxr / schema.METADATA, schema.METADATA_COLUMNS, [
            [{"dicom_id": i.dicom_id, "subject_id": i.subject_id, "study_id": i.study_id, "ViewPosition": i.view,
              "StudyDate": f"{i.day:%Y%m%d}", "StudyTime": i.time_text, **METADATA_FIXED}[column]
             for column in schema.METADATA_COLUMNS] for i, _ in listed])
    if suffix == "dcm":
        _gz_csv(mini.cxr / schema.RECORD_LIST, schema.RECORD_LIST_COLUMNS,
                [(i.subject_id, i.study_id, i.dicom_id, path) for i, path in listed])
    _gz_csv(mini.cxr / schema.SPLIT, schema.SPLIT_COLUMNS,
            [(i.dicom_id, i.study_id, i.subject_id, i.official_split) for i, _ in listed
             if i.fate != "duplicate_image"])
    rows = [[subject, study, *(cells.get(label, "") for label in schema.CHEXPERT_LABELS)]
            for (subject, study), cells in studies.items() if cells]
    _gz_csv(mini.cxr / schema.CHEXPERT, schema.CHEXPERT_COLUMNS, rows)


def _write_iv(mini: MiniMimic) -> None:
    """hosp/d_labitems.csv.gz and hosp/labevents.csv.gz (every published column, charttime order)."""
    _gz_csv(mini.iv / schema.D_LABITEMS, schema.D_LABITEMS_COLUMNS, D_LABITEMS)
    rows = []
    for number, lab in enumerate(sorted(mini.labs, key=lambda lab: lab["charttime"]), start=1):
        chart = lab["charttime"].replace(microsecond=0)
        cells = {"labevent_id": str(number), "subject_id": lab["subject_id"], "hadm_id": "" if number % 3 else
                 str(20_000_000 + number), "specimen_id": str(30_000_000 + number), "itemid": str(lab["itemid"]),
                 "order_provider_id": "" if number % 2 else "P4X2QZ", "charttime": f"{chart:%Y-%m-%d %H:%M:%S}",
                 "storetime": f"{chart + timedelta(hours=1):%Y-%m-%d %H:%M:%S}", "value": lab["value"],
                 "valuenum": lab["valuenum"], "valueuom": lab["valueuom"], "ref_range_lower": "",
                 "ref_range_upper": "", "flag": "abnormal" if number % 5 == 0 else "", "priority": "ROUTINE",
                 "comments": "___, see note" if number % 4 == 0 else ""}
        rows.append([cells[column] for column in schema.LABEVENTS_COLUMNS])
    _gz_csv(mini.iv / schema.LABEVENTS, schema.LABEVENTS_COLUMNS, rows)


def write_mini_mimic(root: Path, images: str = "jpg", with_metadata: bool = True, seed: int = 0) -> MiniMimic:
    """Write root/cxr (MIMIC-CXR-JPG, or the DICOM release with images='dicom') and root/iv (MIMIC-IV hosp)."""
    mini = plan_mini_mimic(seed)
    mini.cxr, mini.iv = root / "cxr", root / "iv"
    _write_cxr(mini, "jpg" if images == "jpg" else "dcm", with_metadata, np.random.default_rng(seed + 1))
    _write_iv(mini)
    return mini
