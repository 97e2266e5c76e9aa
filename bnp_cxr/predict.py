"""Predict serum BNP / NT-proBNP for new radiographs with a trained run, with an attribution overlay.

An image goes through exactly the records' preparation (bnp_cxr.records.prepare.model_image: read in
display convention, intensity window, letterbox, uint16 quantisation), so a prediction here equals
the model's prediction on the same image's record. Output files are named by a pseudonymous key of
the input path (bnp_cxr.data.privacy), never by the path itself, which may carry a patient's name.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from bnp_cxr.data.labs import PositivityThresholds, combined_positivity
from bnp_cxr.rejects import Reject
from bnp_cxr.records.standardize import run_standardization, standardize_image
from bnp_cxr.workspace import RunDir


@dataclass(frozen=True)
class Prediction:
    """One radiograph's estimate: pg/mL values, positive flag (BNPP > 400 or BNP > 100), overlay file."""

    input_path: str
    image_key: str  # pseudonymous
    bnp_pg_ml: float
    bnpp_pg_ml: float
    positive: int
    overlay: str


def model_input(path: str | os.PathLike, size: int, *, allow_lateral: bool = False,
                standardize: str = "none") -> tuple[np.ndarray, tuple]:
    """float32 [size, size, 1] in [0, 1] and its content box, prepared as the records are and standardised."""
    from bnp_cxr.data.imaging import read_radiograph
    from bnp_cxr.records.prepare import letterbox_geometry, model_image

    pixels = read_radiograph(path, allow_lateral=allow_lateral).pixels
    geometry = letterbox_geometry(*pixels.shape, size)
    image = model_image(pixels, geometry)
    image = standardize_image((image.astype(np.float32) / 65535)[..., None], geometry.content_box, standardize)
    return image, geometry.content_box


def estimate(log10_bnp_bnpp: Sequence[float], thresholds: PositivityThresholds = PositivityThresholds()) -> dict:
    """Model output [log10 BNP, log10 BNPP] -> pg/mL values and the combined positive flag."""
    bnp, bnpp = (10.0 ** float(value) for value in log10_bnp_bnpp)
    positive = combined_positivity((bnp, 0), (bnpp, 0), thresholds)
    return {"bnp_pg_ml": bnp, "bnpp_pg_ml": bnpp, "positive": positive}


def predict_images(run_dir: str | os.PathLike, paths: Sequence[str | os.PathLike], out_dir: str | os.PathLike, *,
                   method: str = "gradcam", target: str = "bnpp", lung_model: str | None = None,
                   thresholds: PositivityThresholds = PositivityThresholds(), salt: str | None = None,
                   allow_lateral: bool = False) -> tuple[list[Prediction], list[Reject]]:
    """Predict each image with the run's model and write an overlay PNG per image; bad inputs are rejected."""
    from bnp_cxr.attribution.callbacks import ModelGradients
    from bnp_cxr.attribution.methods import MethodConfig, attribution_maps
    from bnp_cxr.evaluation.evaluate import load_run_model, read_run_config
    from bnp_cxr.data.imaging import RadiographError
    from bnp_cxr.attribution.panels import overlay_image
    from bnp_cxr.data.privacy import pseudonymize, resolve_salt

    run_config = read_run_config(run_dir)
    size, standardize = int(run_config["size"]), run_standardization(run_config)
    model = load_run_model(RunDir(run_dir).model)
    gradients = ModelGradients(model, target)
    lungs = None
    if lung_model:
        from bnp_cxr.lungs import load_lung_model, predict_lung_masks

        lungs = load_lung_model(lung_model)
    salt = resolve_salt(salt)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    predictions, rejected = [], []
    for path in paths:
        try:
            image, (top, left, bottom, right) = model_input(path, size, allow_lateral=allow_lateral,
                                                            standardize=standardize)
        except RadiographError as error:
            rejected.append(Reject(image_path=str(path), stage="image", reason=error.reason, column="image_path",
                                   detail=error.detail))
            continue
        batch = image[None]
        output = np.asarray(model(batch, training=False))[0]
        attribution = attribution_maps(model, batch, method, target=target, config=MethodConfig(),
                                       gradients=gradients)[0]
        lung_mask = None
        if lungs is not None:
            lung_mask = predict_lung_masks(lungs, batch)[0]
            lung_mask[:top], lung_mask[bottom:], lung_mask[:, :left], lung_mask[:, right:] = False, False, False, False
        key = pseudonymize(str(Path(path).resolve()), salt, kind="image")
        values = estimate(output, thresholds)
        flag = {1: "positive", 0: "negative", -1: "unknown"}[values["positive"]]
        title = (f"{key}: BNP {values['bnp_pg_ml']:.0f}, BNPP {values['bnpp_pg_ml']:.0f} pg/mL ({flag}); "
                 f"{method} of log10 {target.upper()}")
        overlay = overlay_image(image[..., 0], attribution, out / f"{key}_{method}.png", lung_mask=lung_mask,
                                method=method, title=title)
        predictions.append(Prediction(str(path), key, values["bnp_pg_ml"], values["bnpp_pg_ml"], values["positive"],
                                      str(overlay)))
    return predictions, rejected


def format_predictions(predictions: Sequence[Prediction], rejected: Sequence[Reject]) -> str:
    """A table for the terminal: input, key, BNP and BNPP (pg/mL), flag, overlay; then the rejects."""
    flags = {1: "positive", 0: "negative", -1: "unknown"}
    lines = [f"{'image':<40} {'key':<18} {'BNP pg/mL':>10} {'BNPP pg/mL':>11}  {'call':<9} overlay"]
    for p in predictions:
        lines.append(f"{_short(p.input_path):<40} {p.image_key:<18} {p.bnp_pg_ml:>10.0f} {p.bnpp_pg_ml:>11.0f}  "
                     f"{flags[p.positive]:<9} {p.overlay}")
    for r in rejected:
        lines.append(f"{_short(r.image_path):<40} rejected: {r.reason} ({r.detail})")
    return "\n".join(lines)


def _short(path: str, width: int = 40) -> str:
    return path if len(path) <= width else "..." + path[-(width - 3):]

