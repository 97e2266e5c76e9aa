"""How much does a trained run's test AUC drop on radiographs that look as if another site took them?

No external test set is in ../shared, so the test split of a run's own records is re-rendered as another
scanner and processing chain might show it: darker / brighter exposure (gamma), flatter contrast, noise,
blur and a lower native resolution, each applied inside the content box to the windowed record image
*before* the run's own input standardisation (so a CLAHE run meets the shift as it would in deployment);
edge enhancement (an unsharp mask, as many CR / DR chains apply) and stronger gammas, which the training's
site augmentation never draws; and another field of view: the anatomy narrower (a portrait detector
letterboxed), smaller (a wider collimation) or larger (a tighter one), with the content box moved along.
Reports the AUC of the combined label (predicted log10 BNPP) per shift with a patient-bootstrap CI.

    python bench/site_shift.py --runs work/nih/runs/before/size128_fold0_seed0 work/nih/runs/default/size128_fold0_seed0
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import cv2  # noqa: E402
import numpy as np  # noqa: E402
from common import report  # noqa: E402

# name -> function of a [H, W] float image in [0, 1]; parameters chosen as plausible between-site differences.
SHIFTS = {
    "none": lambda image, rng: image,
    "gamma_0.6": lambda image, rng: image ** 0.6,
    "gamma_1.6": lambda image, rng: image ** 1.6,
    "flat_contrast": lambda image, rng: 0.25 + 0.5 * image,
    "noise_0.04": lambda image, rng: image + rng.normal(0.0, 0.04, image.shape),
    "blur_1.5px": lambda image, rng: cv2.GaussianBlur(image, (0, 0), 1.5),
    "half_resolution": lambda image, rng: cv2.resize(
        cv2.resize(image, (image.shape[1] // 2, image.shape[0] // 2), interpolation=cv2.INTER_AREA),
        (image.shape[1], image.shape[0]), interpolation=cv2.INTER_LINEAR),
    # outside the site augmentation's ranges (records.augment.SiteAugmentConfig)
    "gamma_0.45": lambda image, rng: image ** 0.45,
    "gamma_2.2": lambda image, rng: image ** 2.2,
    "edge_enhance": lambda image, rng: image + 1.0 * (image - cv2.GaussianBlur(image, (0, 0), 0.02 * image.shape[0])),
}
# name -> (x scale, y scale) of the anatomy about the image centre; the content box moves with it.
GEOMETRY = {"narrow_0.85": (0.85, 1.0), "zoom_out_0.85": (0.85, 0.85), "zoom_in_1.15": (1.15, 1.15)}


def moved(image: np.ndarray, box: np.ndarray, scale_x: float, scale_y: float) -> tuple[np.ndarray, np.ndarray]:
    """The [H, W] image scaled about its centre (outside: 0, the letterbox fill) and its content box moved along."""
    size = image.shape[0]
    centre = (size - 1) / 2.0
    matrix = np.array([[scale_x, 0.0, (1 - scale_x) * centre], [0.0, scale_y, (1 - scale_y) * centre]])
    out = cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderValue=0.0)
    top, left, bottom, right = (float(value) for value in box)
    new_box = [centre + (top - centre) * scale_y, centre + (left - centre) * scale_x,
               centre + (bottom - centre) * scale_y, centre + (right - centre) * scale_x]
    new_box = np.clip([np.ceil(new_box[0]), np.ceil(new_box[1]), np.floor(new_box[2]), np.floor(new_box[3])], 0, size)
    return out, new_box.astype(box.dtype)


def shifted(image: np.ndarray, box: np.ndarray, shift: str,
            rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The [H, W, 1] record image with `shift` applied (inside its content box, clipped to [0, 1]) and its box."""
    out = image[..., 0].astype(np.float32)
    if shift in GEOMETRY:
        out, box = moved(out, box, *GEOMETRY[shift])
        return np.clip(out, 0.0, 1.0)[..., None], box
    top, left, bottom, right = (int(value) for value in box)
    crop = out[top:bottom, left:right]
    out[top:bottom, left:right] = np.clip(SHIFTS[shift](crop, rng), 0.0, 1.0)
    return out[..., None], box


def test_images(records: Path, size: int):
    """The test split's windowed images (no standardisation), content boxes, patient keys and labels."""
    from bnp_cxr.records.reader import make_dataset

    images, boxes, patients, labels = [], [], [], []
    for batch, _, meta in make_dataset(records, "test", size, batch_size=64, deterministic=True,
                                       with_metadata=True).as_numpy_iterator():
        images.append(batch)
        boxes.append(meta["content_box"])
        patients += [value.decode() for value in meta["patient_id"]]
        labels.append(meta["positive"])
    return np.concatenate(images), np.concatenate(boxes), np.array(patients), np.concatenate(labels)


def run_rows(run_dir: Path, n_boot: int, seed: int) -> list[dict]:
    """One row per shift for one run: AUC [CI] of predicted log10 BNPP against the combined label."""
    from bnp_cxr.evaluation.evaluate import load_run_model, read_run_config
    from bnp_cxr.evaluation.metrics import finding_aucs
    from bnp_cxr.evaluation.study import format_entry
    from bnp_cxr.records.standardize import run_standardization, standardize_image
    from bnp_cxr.workspace import RunDir

    config = read_run_config(run_dir)
    size, standardize = int(config["size"]), run_standardization(config)
    model = load_run_model(RunDir(run_dir).model)
    images, boxes, patients, labels = test_images(Path(config["records_dir"]), size)
    rows = []
    for shift in (*SHIFTS, *GEOMETRY):
        rng = np.random.default_rng(seed)
        inputs = np.stack([standardize_image(*shifted(image, box, shift, rng), standardize)
                           for image, box in zip(images, boxes)])
        predicted = model.predict(inputs, batch_size=64, verbose=0)[:, 1]
        auc = finding_aucs({"patient_id": patients, "pred_log10_bnpp": predicted, "positive": labels},
                           ["positive"], n_boot=n_boot, seed=seed)["positive"]
        rows.append({"run": f"{run_dir.parent.name}/{run_dir.name}", "standardize": standardize, "shift": shift,
                     "n_test": int(auc["n"]), "auc": auc["estimate"], "auc_text": format_entry(auc)})
    base = rows[0]["auc"]
    for row in rows:
        row["drop"] = round(base - row["auc"], 4)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=Path, nargs="+", required=True, help="trained run folders")
    parser.add_argument("--n-boot", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default="site_shift", help="result file bench/results/NAME.json")
    args = parser.parse_args()
    rows = [row for run_dir in args.runs for row in run_rows(run_dir, args.n_boot, args.seed)]
    worst = {}
    for row in rows:
        worst[row["run"]] = max(worst.get(row["run"], 0.0), row["drop"])
    report(args.name, {"shifts": [*SHIFTS, *GEOMETRY], "largest_drop": worst}, rows,
           ["run", "standardize", "shift", "n_test", "auc_text", "drop"])


if __name__ == "__main__":
    main()
