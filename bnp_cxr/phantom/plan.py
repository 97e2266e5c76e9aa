"""Cohort-level draws: patients, studies, dates, views, acquisitions, labs and planted defects.

Everything random about the cohort except the pixels is drawn here in the parent process from one
generator seeded by config.seed, in a fixed order; each image then gets its own seed, so the pixels do
not depend on how many worker processes render them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

import numpy as np

from bnp_cxr.phantom import model
from bnp_cxr.phantom.config import CohortConfig
from bnp_cxr.phantom.dicomio import Acquisition, Identity
from bnp_cxr.phantom.render import StudySpec

# Synthetic non-ASCII names exercise SpecificCharacterSet handling (Latin-1 and UTF-8).
NON_ASCII_NAMES = (
    ("Müller^Zoë", "ISO_IR 100"), ("Ñúñez^José", "ISO_IR 100"), ("Østergård^Åse", "ISO_IR 100"),
    ("Wójcik^Łukasz", "ISO_IR 192"), ("Παπαδόπουλος^Ελένη", "ISO_IR 192"), ("山田^太郎", "ISO_IR 192"),
)
LAB_TESTS = ("BNPP", "BNP")

# Planted defects and the reject the pipeline should give (bnp_cxr.data.manifest / bnp_cxr.data.imaging codes).
DEFECTS = {
    "truncated_dicom": {"stage": "image", "reason": "undecodable_pixels", "column": "image_path"},
    "lateral_dicom": {"stage": "image", "reason": "lateral_view", "column": "image_path"},
    "lateral_manifest_view": {"stage": "manifest", "reason": "lateral_view", "column": "view"},
    "bad_study_datetime": {"stage": "manifest", "reason": "bad_datetime", "column": "study_datetime"},
    "missing_file": {"stage": "manifest", "reason": "file_not_found", "column": "image_path"},
    "duplicate_row": {"stage": "manifest", "reason": "duplicate_row", "column": "image_path"},
}
BAD_DATETIME_TEXT = "2019-02-30 25:61"


@dataclass
class Study:
    """One image of the cohort with everything known about it before rendering."""

    spec: StudySpec
    patient_index: int
    identity: Identity
    acquisition: Acquisition
    log10_bnpp: float
    log10_bnp: float
    defect: str = ""

    @property
    def image_path(self) -> str:
        return f"images/im{self.spec.index:05d}.dcm"


@dataclass
class CohortPlan:
    """The drawn cohort: studies in image order, lab rows, and manifest rows with planted defects."""

    studies: list[Study]
    labs: list[dict]
    manifest: list[dict]
    defects: list[dict] = field(default_factory=list)


def _seed(config: CohortConfig, stream: int, index: int) -> int:
    return int(np.random.SeedSequence([config.seed, stream, index]).generate_state(1)[0])


def _acquisition(rng: np.random.Generator, transfer_syntax: str) -> Acquisition:
    modality = "CR" if rng.random() < 0.45 else "DX"
    mono1 = rng.random() < (0.75 if modality == "CR" else 0.15)
    bits = int(rng.choice([12, 14], p=[0.6, 0.4])) if modality == "CR" else int(rng.choice([14, 16], p=[0.6, 0.4]))
    has_rescale = rng.random() < 0.25
    slope, intercept = ((1.0, 0.0), (1.0, -1024.0), (0.5, 0.0), (2.0, 100.0))[int(rng.integers(1, 4))] \
        if has_rescale else (1.0, 0.0)
    low = rng.uniform(0.02, 0.12)
    # 16-bit detectors rarely fill their range; using part of it also keeps files smaller.
    high = rng.uniform(0.55, 0.75) if bits == 16 else rng.uniform(0.85, 0.98)
    spacing_tags = str(rng.choice(["PixelSpacing", "ImagerPixelSpacing", "both"],
                                  p=[0.6, 0.2, 0.2] if modality == "CR" else [0.2, 0.5, 0.3]))
    return Acquisition(modality, "MONOCHROME1" if mono1 else "MONOCHROME2", bits, transfer_syntax, slope,
                       intercept, has_rescale, low, high, spacing_tags)


def _transfer_syntaxes(rng: np.random.Generator, n: int) -> list[str]:
    """Quota per syntax (at least one of each), shuffled: mostly explicit VR little endian, a few of each codec.

    Per 1536 x 1280 image, JPEG 2000 costs about 0.8 s to encode and decode again, RLE about 0.07 s and an
    uncompressed file about 0.01 s: a few files exercise each codec and uncompressed files carry the bulk
    (lossless codecs give the same pixels either way). Lossy JPEG 2000 comes first in the quota list, so the
    same two images are lossy whatever the other quotas.
    """
    quotas = {"jpeg2000_lossy": max(1, min(2, n // 100 + 1)), "rle_lossless": max(1, round(0.08 * n)),
              "implicit_vr_le": max(1, round(0.04 * n)), "jpeg2000_lossless": max(1, min(4, n // 100 + 1))}
    names = [name for name, count in quotas.items() for _ in range(count)]
    names += ["explicit_vr_le"] * (n - len(names))
    return [names[i] for i in rng.permutation(n)]


def _lab_value_text(log10_value: float, assay_range: tuple[float, float]) -> str:
    value = 10.0 ** log10_value
    low, high = assay_range
    if value < low:
        return f"<{low:g}"
    if value > high:
        return f">{high:g}"
    return f"{value:.0f}" if value >= 100 else f"{value:.1f}"


def plan_cohort(config: CohortConfig) -> CohortPlan:
    """Draw the whole cohort except pixels, deterministically from config.seed."""
    rng = np.random.default_rng([config.seed, 1])
    n_patients, n_images = config.n_patients, config.n_images
    repeaters = rng.choice(n_patients, n_images - n_patients, replace=False)
    patient_of_study = np.sort(np.concatenate([np.arange(n_patients), repeaters]))
    severity = model.sample_severities(rng, patient_of_study, n_patients, config)
    log10_bnpp, log10_bnp = model.sample_log10_labs(rng, severity, config)
    order = rng.permutation(n_images)  # image numbers carry no patient grouping
    start = datetime.fromisoformat(config.start_date)
    first_visit = {p: start + timedelta(days=float(rng.uniform(0, config.span_days))) for p in range(n_patients)}
    syntaxes = _transfer_syntaxes(rng, n_images)
    names = _patient_names(rng, n_patients)
    studies: list[Study] = []
    visits: dict[int, int] = {}
    for study_index in range(n_images):
        patient = int(patient_of_study[study_index])
        visit = visits.get(patient, 0)
        visits[patient] = visit + 1
        day = first_visit[patient] + timedelta(days=float(visit * rng.uniform(7, 300)))
        when = day.replace(hour=int(rng.integers(7, 23)), minute=int(rng.integers(0, 60)), second=0, microsecond=0)
        s = float(severity[study_index])
        strengths = model.finding_strengths(s, config)
        view = "AP" if rng.random() < strengths["p_ap_view"] else "PA"
        electrodes = bool(rng.random() < strengths["p_confounder"])
        image_index = int(order[study_index])
        acquisition = _acquisition(rng, syntaxes[image_index])
        patient_id = f"P{patient:06d}"
        name, charset = names[patient]
        identity = Identity(patient_id, name, charset, "FM"[patient % 2],
                            f"{1930 + patient * 7 % 60}{1 + patient % 12:02d}{1 + patient % 28:02d}",
                            when, view, f"ACC{config.seed % 1000:03d}{image_index:06d}")
        spec = StudySpec(index=image_index, patient_seed=_seed(config, 2, patient),
                         image_seed=_seed(config, 3, image_index), severity=s, view=view, electrodes=electrodes,
                         detector_id=(0 if acquisition.modality == "CR" else 3) + int(rng.integers(0, 3)))
        studies.append(Study(spec, patient, identity, acquisition, float(log10_bnpp[study_index]),
                             float(log10_bnp[study_index])))
    studies.sort(key=lambda study: study.spec.index)
    labs = _plan_labs(rng, studies, config)
    plan = CohortPlan(studies=studies, labs=labs, manifest=[_manifest_row(study) for study in studies])
    if config.plant_defects:
        _plant_defects(rng, plan)
    return plan


def _patient_names(rng: np.random.Generator, n_patients: int) -> list[tuple[str, str]]:
    names = [(f"PHANTOM^P{p:06d}", "") for p in range(n_patients)]
    count = min(len(NON_ASCII_NAMES), max(2, n_patients // 40))
    for slot, patient in enumerate(rng.choice(n_patients, count, replace=False)):
        names[int(patient)] = NON_ASCII_NAMES[slot]
    return names


def _plan_labs(rng: np.random.Generator, studies: list[Study], config: CohortConfig) -> list[dict]:
    """Lab rows: per study some of BNPP / BNP near the study time, some drawn too far away, plus unrelated labs."""
    p_both, p_bnpp, p_bnp = config.p_tests_both, config.p_tests_bnpp_only, config.p_tests_bnp_only
    rows: list[dict] = []
    for study in studies:
        category = rng.choice(4, p=[p_both, p_bnpp, p_bnp, 1.0 - p_both - p_bnpp - p_bnp])
        tests = (("BNPP", "BNP"), ("BNPP",), ("BNP",), ())[int(category)]
        for test in tests:
            if rng.random() < config.p_lab_outside_window:
                hours = float(rng.choice([-1, 1]) * rng.uniform(30, 72))
            else:
                hours = float(np.clip(rng.normal(0.0, config.lab_offset_sd_hours), -20.0, 20.0))
            log10_value = study.log10_bnpp if test == "BNPP" else study.log10_bnp
            rows.append(_lab_row(study.identity.patient_id, study.identity.study_datetime + timedelta(hours=hours),
                                 test, log10_value, config))
    by_patient: dict[str, list[Study]] = {}
    for study in studies:
        by_patient.setdefault(study.identity.patient_id, []).append(study)
    for patient_id, own in sorted(by_patient.items()):
        for _ in range(int(rng.poisson(config.unrelated_labs_per_patient))):
            # Weeks away from any radiograph: a clinic visit without imaging.
            anchor = own[int(rng.integers(len(own)))]
            when = anchor.identity.study_datetime + timedelta(days=float(rng.choice([-1, 1]) * rng.uniform(20, 90)))
            s = float(np.clip(anchor.spec.severity + rng.normal(0, 0.1), 0, 1))
            log10_bnpp, log10_bnp = model.sample_log10_labs(rng, np.array([s]), config)
            test = "BNPP" if rng.random() < 0.6 else "BNP"
            value = float((log10_bnpp if test == "BNPP" else log10_bnp)[0])
            rows.append(_lab_row(patient_id, when, test, value, config))
    rows.sort(key=lambda row: (row["patient_id"], row["lab_datetime"], row["test"]))
    return rows


def _lab_row(patient_id: str, when: datetime, test: str, log10_value: float, config: CohortConfig) -> dict:
    assay = config.bnpp_assay_range_pg_ml if test == "BNPP" else config.bnp_assay_range_pg_ml
    minute = (when + timedelta(seconds=30)).replace(second=0, microsecond=0)  # labs are stamped to the minute
    return {"patient_id": patient_id, "lab_datetime": minute.isoformat(timespec="seconds"),
            "test": test, "value": _lab_value_text(log10_value, tuple(assay))}


def _manifest_row(study: Study) -> dict:
    stem = study.image_path[len("images/"):-len(".dcm")]
    return {"patient_id": study.identity.patient_id, "image_path": study.image_path,
            "study_datetime": study.identity.study_datetime.isoformat(timespec="seconds"),
            "view": study.spec.view, "lung_mask_path": f"masks/{stem}_lungs.png",
            "component_mask_path": f"components/{stem}.png"}


def _plant_defects(rng: np.random.Generator, plan: CohortPlan) -> None:
    """A few deterministic defects, each recorded with the reject the pipeline should give."""
    # Image-stage defects need a paired lab, or the row would stop earlier as no_label.
    paired = expected_pairing(plan)
    labelled = [i for i, study in enumerate(plan.studies) if paired[study.image_path]]
    # The truncated file is an uncompressed one: its header still parses, only the pixel data is short.
    uncompressed = [i for i in labelled if plan.studies[i].acquisition.transfer_syntax == "explicit_vr_le"]
    truncated = int(rng.choice(uncompressed or labelled))
    if not uncompressed:
        plan.studies[truncated].acquisition = replace(plan.studies[truncated].acquisition,
                                                      transfer_syntax="explicit_vr_le")
    lateral = int(rng.choice([i for i in labelled if i != truncated]))
    others = [i for i in range(len(plan.studies)) if i not in (truncated, lateral)]
    lateral_row, bad_date, duplicated = (int(i) for i in rng.choice(others, 3, replace=False))
    chosen = [truncated, lateral, lateral_row, bad_date, duplicated]
    plan.studies[truncated].defect = "truncated_dicom"
    plan.studies[lateral].defect = "lateral_dicom"
    plan.studies[lateral_row].defect = "lateral_manifest_view"
    plan.studies[bad_date].defect = "bad_study_datetime"
    plan.manifest[lateral_row]["view"] = "LATERAL"
    plan.manifest[bad_date]["study_datetime"] = BAD_DATETIME_TEXT
    missing = dict(plan.manifest[chosen[0]], image_path=f"images/im{len(plan.studies):05d}.dcm")
    # Extra rows: the duplicate directly after its original, the missing file at the end.
    rows = list(plan.manifest)
    rows.insert(duplicated + 1, dict(plan.manifest[duplicated]))
    rows.append(missing)
    plan.manifest = rows
    extra = {duplicated + 1: "duplicate_row", len(rows) - 1: "missing_file"}
    for position, row in enumerate(rows):
        index = None if position in extra else int(row["image_path"][len("images/im"):-len(".dcm")])
        kind = extra.get(position) or (plan.studies[index].defect if index is not None else "")
        if kind:
            plan.defects.append({"kind": kind, "image_path": row["image_path"], "manifest_row": position + 2,
                                 **DEFECTS[kind]})


def expected_pairing(plan: CohortPlan, window_hours: float = 24.0) -> dict[str, dict[str, float]]:
    """Per image path, the nearest lab of each test within the window (what pairing should find)."""
    labs_of: dict[str, list[dict]] = {}
    for row in plan.labs:
        labs_of.setdefault(row["patient_id"], []).append(row)
    found: dict[str, dict[str, float]] = {}
    for study in plan.studies:
        when = study.identity.study_datetime
        found[study.image_path] = {}
        for row in labs_of.get(study.identity.patient_id, []):
            hours = abs((datetime.fromisoformat(row["lab_datetime"]) - when).total_seconds()) / 3600
            if hours <= window_hours and hours < found[study.image_path].get(row["test"], math.inf):
                found[study.image_path][row["test"]] = hours
    return found
