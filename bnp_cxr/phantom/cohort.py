"""generate_cohort: the phantom cohort on disk (DICOMs, masks, manifest, labs, truth, cohort.json).

Layout (paths in CSVs are relative to the cohort folder, with forward slashes): images/imNNNNN.dcm,
masks/imNNNNN_lungs.png, components/imNNNNN.png, manifest.csv, labs.csv, truth.csv, cohort.json and
contact_sheet.png. See docs/phantom.md for the generative model and the file contents.
"""

from __future__ import annotations

import csv
import json
import multiprocessing
import os
import platform
import time
from dataclasses import replace
from importlib import metadata
from pathlib import Path

import cv2
import numpy as np

from bnp_cxr.files import write_json
from bnp_cxr.phantom import model
from bnp_cxr.phantom.config import COMPONENT_BITS, COMPONENT_DESCRIPTIONS, CohortConfig
from bnp_cxr.phantom.dicomio import build_dataset, to_stored, write_dicom
from bnp_cxr.phantom.plan import CohortPlan, Study, expected_pairing, plan_cohort
from bnp_cxr.phantom.render import render_study

MANIFEST_COLUMNS = ("patient_id", "image_path", "study_datetime", "view", "lung_mask_path", "component_mask_path")
LABS_COLUMNS = ("patient_id", "lab_datetime", "test", "value")
COMPONENT_TRUTH = ("strength", "row", "col", "top", "left", "bottom", "right")
COHORT_SUMMARY = "cohort.json"  # written last: its presence beside a manifest marks the phantom cohort
TRUNCATE_FRACTION = 0.6  # of the file: cuts inside the pixel data of an uncompressed file
PNG_PARAMS = [cv2.IMWRITE_PNG_COMPRESSION, 1]  # fast: the masks are small either way


def generate_cohort(out_dir: str | os.PathLike, config: CohortConfig | None = None, *, workers: int = 1,
                    progress: bool = True) -> dict:
    """Generate the phantom cohort into out_dir and return the content of its cohort.json.

    Idempotent: when out_dir/cohort.json already describes this config, it is returned without work.
    A cohort.json of another config raises FileExistsError (pick another folder or delete it).
    """
    config = config or CohortConfig()
    out = Path(out_dir)
    summary_path = out / COHORT_SUMMARY
    if summary_path.is_file():
        existing = json.loads(summary_path.read_text(encoding="utf-8"))
        if existing.get("config") == config.to_dict():
            return existing
        raise FileExistsError(f"{out} holds a phantom cohort of another config; delete it or choose another folder")
    started = time.perf_counter()
    for sub in ("images", "masks", "components"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    plan = plan_cohort(config)
    tasks = [(str(out), config.to_dict(), study) for study in plan.studies]
    truth_rows = _run(tasks, workers, progress)
    _write_csv(out / "manifest.csv", MANIFEST_COLUMNS, plan.manifest)
    _write_csv(out / "labs.csv", LABS_COLUMNS, plan.labs)
    _write_csv(out / "truth.csv", list(truth_rows[0]), truth_rows)
    summary = _summary(out, config, plan, truth_rows)
    from bnp_cxr.phantom.contact import write_contact_sheet

    write_contact_sheet(out, out / "contact_sheet.png")
    summary["run"] = {"elapsed_seconds": round(time.perf_counter() - started, 2), "workers": workers,
                      "python": platform.python_version(), "packages": _versions()}
    write_json(summary_path, summary)  # written last: its presence means the cohort is complete
    return summary


def _run(tasks: list, workers: int, progress: bool) -> list[dict]:
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(tasks), desc="phantom cohort", unit="image")
    results = []
    if workers > 1:
        # Spawn, not fork: the caller may have imported TensorFlow, which is not fork-safe.
        with multiprocessing.get_context("spawn").Pool(workers, initializer=_single_threaded) as pool:
            for row in pool.imap(_render_and_write, tasks, chunksize=1):
                results.append(row)
                bar and bar.update()
    else:
        for task in tasks:
            results.append(_render_and_write(task))
            bar and bar.update()
    if bar:
        bar.close()
    return results


def _single_threaded() -> None:
    """Worker initialiser: the workers already fill the cores, so OpenCV's own threads would only compete."""
    cv2.setNumThreads(1)


def _render_and_write(task: tuple[str, dict, Study]) -> dict:
    """Worker: render one study, write its DICOM and masks, return its truth.csv row."""
    out_dir, config_dict, study = task
    out, config = Path(out_dir), CohortConfig.from_dict(config_dict)
    rendered = render_study(study.spec, config)
    stored = to_stored(rendered.display, study.acquisition)
    identity = study.identity
    if study.defect == "lateral_dicom":
        identity = replace(identity, view_position="LL")
    ds = build_dataset(stored, study.acquisition, identity, config.pixel_spacing_mm, config.seed, study.spec.index,
                       burned_in_annotation=study.spec.view == "AP")
    path = out / study.image_path
    write_dicom(path, ds, stored, study.acquisition.transfer_syntax)
    if study.defect == "truncated_dicom":
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * TRUNCATE_FRACTION)])
    stem = path.stem
    cv2.imwrite(str(out / "masks" / f"{stem}_lungs.png"), rendered.lung_mask, PNG_PARAMS)
    cv2.imwrite(str(out / "components" / f"{stem}.png"), rendered.components, PNG_PARAMS)
    return _truth_row(study, rendered, identity.view_position)


def _component_truth(components: np.ndarray, bit: int, strength: float) -> dict:
    """Strength, centroid and bounding box (fractions of the image) of one bitmask plane."""
    plane = (components & bit) > 0
    if not plane.any():
        return {"strength": round(strength, 6), **{key: "" for key in COMPONENT_TRUTH[1:]}}
    height, width = plane.shape
    rows = np.nonzero(plane.any(axis=1))[0]
    cols = np.nonzero(plane.any(axis=0))[0]
    row_sum, col_sum = plane.sum(axis=1), plane.sum(axis=0)
    total = float(row_sum.sum())
    return {"strength": round(strength, 6),
            "row": round(float((row_sum * (np.arange(height) + 0.5)).sum()) / total / height, 6),
            "col": round(float((col_sum * (np.arange(width) + 0.5)).sum()) / total / width, 6),
            "top": round(rows[0] / height, 6), "left": round(cols[0] / width, 6),
            "bottom": round((rows[-1] + 1) / height, 6), "right": round((cols[-1] + 1) / width, 6)}


def _truth_row(study: Study, rendered, dicom_view: str) -> dict:
    strengths = rendered.truth["strengths"]
    kinds = {item["kind"] for item in rendered.truth["confounder_items"]}
    component_strength = {"lung_opacity": strengths["lung_opacity"], "kerley_lines": strengths["kerley_lines"],
                          "heart": strengths["cardiomegaly"], "effusion": strengths["effusion"],
                          "confounder": float(bool(kinds))}
    acquisition = study.acquisition
    row = {"image_path": study.image_path, "patient_id": study.identity.patient_id,
           "study_datetime": study.identity.study_datetime.isoformat(timespec="seconds"),
           "view": study.spec.view, "dicom_view_position": dicom_view, "severity": round(study.spec.severity, 6),
           "log10_bnpp": round(study.log10_bnpp, 6), "log10_bnp": round(study.log10_bnp, 6),
           "ctr": round(strengths["ctr"], 6), "ctr_measured": round(rendered.truth["ctr_measured"], 6),
           "kerley_line_count": rendered.truth["kerley_line_count"]}
    for name, bit in COMPONENT_BITS.items():
        for key, value in _component_truth(rendered.components, bit, component_strength[name]).items():
            row[f"{name}_{key}"] = value
    row.update({"confounder_present": int(bool(kinds)), "ecg_electrodes": int("ecg_electrode" in kinds),
                "portable_marker": int("portable_marker" in kinds), "modality": acquisition.modality,
                "photometric": acquisition.photometric, "bits_stored": acquisition.bits_stored,
                "transfer_syntax": acquisition.transfer_syntax,
                "rescale_slope": acquisition.rescale_slope if acquisition.has_rescale else "",
                "rescale_intercept": acquisition.rescale_intercept if acquisition.has_rescale else "",
                "planted_defect": study.defect})
    return row


def _write_csv(path: Path, columns, rows: list[dict]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def _versions() -> dict[str, str]:
    names = ("numpy", "opencv-python-headless", "pydicom", "pylibjpeg", "pylibjpeg-openjpeg", "pylibjpeg-rle")
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions


def _summary(out: Path, config: CohortConfig, plan: CohortPlan, truth_rows: list[dict]) -> dict:
    severity = np.array([row["severity"] for row in truth_rows])
    log10_bnpp = np.array([row["log10_bnpp"] for row in truth_rows])
    log10_bnp = np.array([row["log10_bnp"] for row in truth_rows])
    pairing = expected_pairing(plan)
    # Rows rejected while validating the manifest never reach pairing; image-stage defects do.
    rejected = {d["image_path"] for d in plan.defects
                if d["stage"] == "manifest" and d["kind"] not in ("duplicate_row", "missing_file")}
    no_label = sorted(path for path, found in pairing.items() if not found and path not in rejected)

    def count(key: str) -> dict:
        values = [str(row[key]) for row in truth_rows]
        return {value: values.count(value) for value in sorted(set(values))}

    files = [path for path in sorted(out.rglob("*")) if path.is_file() and path.suffix in (".dcm", ".png", ".csv")]
    return {
        "name": "bnp-cxr phantom cohort",
        "config": config.to_dict(),
        "component_bits": COMPONENT_BITS,
        "component_descriptions": COMPONENT_DESCRIPTIONS,
        "generative_model": {
            "severity": "s = Phi(severity_mean + N(0, severity_patient_sd) [per patient] + N(0, severity_study_sd))",
            "labs": "log10 BNPP = bnpp_intercept + bnpp_slope*s + e1; log10 BNP = bnp_intercept + bnp_slope*s + e2; "
                    "(e1, e2) bivariate normal, sd bnpp_noise_sd / bnp_noise_sd, correlation lab_noise_corr",
            "findings": "strength = clip((s - onset)/(1 - onset), 0, 1)**gamma; ctr = ctr_normal + "
                        "(ctr_max - ctr_normal)*cardiomegaly; P(electrodes) and P(AP view) linear in s",
            "positive": f"BNPP > {config.bnpp_threshold_pg_ml:g} or BNP > {config.bnp_threshold_pg_ml:g} pg/mL",
            "documentation": "docs/phantom.md",
        },
        "label_noise_ceiling": {
            "oracle": "knows s exactly and predicts E[y | s]; no image reader can do better on average",
            "simulated": model.simulated_ceiling(config),
            "cohort": model.ceiling_metrics(severity, log10_bnpp, log10_bnp, config),
        },
        "counts": {
            "patients": config.n_patients, "images": len(truth_rows), "manifest_rows": len(plan.manifest),
            "lab_rows": len(plan.labs),
            "positive_true": int(model.combined_positive(log10_bnpp, log10_bnp, config).sum()),
            "view": count("view"), "modality": count("modality"), "photometric": count("photometric"),
            "bits_stored": count("bits_stored"), "transfer_syntax": count("transfer_syntax"),
            "confounder_present": count("confounder_present"),
        },
        "planted_defects": plan.defects,
        "expected_no_label_images": no_label,
        "disk_megabytes": round(sum(path.stat().st_size for path in files) / 1e6, 1),
    }
