"""Cross-check of the scorecard's localisation metrics against Quantus on the same arrays.

Quantus' TensorFlow extra pins tensorflow < 2.16 and keras < 3, so it cannot sit beside our stack: this
benchmark installs plain `quantus` (no framework extra; its localisation metrics take numpy arrays) into a
separate virtualenv (--venv, created when absent), saves maps and lung masks of every method of
ALL_METHODS on the phantom runs of bench/scorecard.py (--size, --images), runs Quantus there, and compares
per metric and map: pointing game, attribution localisation (positive attributions; = our in-lung mass),
relevance mass accuracy, relevance rank accuracy and top-k intersection (k = 10 % of the pixels; = our
in-lung top-k, ranked by the positive part). Quantus sees the whole image (it has no content box), so ours
is computed with valid=None. Maps that tie at the top-k cut are counted: there Quantus keeps the first
tied pixels in argsort order, ours shares the remaining places between them.

    nice -n 10 python bench/quantus_check.py                  # 64 px, 8 images, venv work/quantus_venv
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from common import report
from scorecard import prepare_runs, scored_images

from bnp_cxr.workspace import WORK_DIR

QUANTUS_SCRIPT = """
import json, sys, numpy as np, quantus
data = np.load(sys.argv[1])
a, s, x, k = data["a"], data["s"], data["x"], int(data["k"])
y = np.zeros(len(a), int)
def run(metric, maps):
    return np.asarray(metric(model=None, x_batch=x, y_batch=y, a_batch=maps, s_batch=s, channel_first=True),
                      dtype=float).tolist()
common = dict(abs=False, normalise=False, disable_warnings=True)
out = {"version": quantus.__version__, "numpy": np.__version__,
       "pointing_game": run(quantus.PointingGame(**common), a),
       "attribution_localisation": run(quantus.AttributionLocalisation(positive_attributions=True, **common), a),
       "relevance_mass_accuracy": run(quantus.RelevanceMassAccuracy(**common), a),
       "relevance_rank_accuracy": run(quantus.RelevanceRankAccuracy(**common), a),
       "top_k_intersection": run(quantus.TopKIntersection(k=k, **common), np.maximum(a, 0))}
json.dump(out, open(sys.argv[2], "w"))
"""


def quantus_python(venv: Path) -> tuple[Path | None, str]:
    """The venv's python with quantus importable, creating the venv when absent; (None, why) on failure."""
    python = venv / "bin" / "python"
    if not python.is_file():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    if subprocess.run([str(python), "-c", "import quantus"], capture_output=True).returncode != 0:
        install = subprocess.run([str(python), "-m", "pip", "install", "-q", "quantus"], capture_output=True,
                                 text=True)
        if install.returncode != 0:
            return None, install.stderr.strip().splitlines()[-1] if install.stderr.strip() else "pip failed"
    return python, ""


def our_values(maps: np.ndarray, masks: np.ndarray, k: int) -> dict[str, list[float]]:
    """Our metrics per map on the whole image (valid=None), named as Quantus' metrics."""
    from bnp_cxr.attribution.inlung import in_lung_metrics
    from bnp_cxr.attribution.localisation import (pointing_game, relevance_mass_accuracy, relevance_rank_accuracy,
                                                  top_k_intersection)

    values: dict[str, list[float]] = {name: [] for name in (
        "pointing_game", "attribution_localisation", "relevance_mass_accuracy", "relevance_rank_accuracy",
        "top_k_intersection")}
    for attribution, mask in zip(maps, masks):
        values["pointing_game"].append(pointing_game(attribution, mask))
        values["attribution_localisation"].append(in_lung_metrics(attribution, mask)["mass_in_lung_fraction"])
        values["relevance_mass_accuracy"].append(relevance_mass_accuracy(attribution, mask))
        values["relevance_rank_accuracy"].append(relevance_rank_accuracy(attribution, mask))
        values["top_k_intersection"].append(top_k_intersection(np.maximum(attribution, 0), mask, k))
    return values


def ties_at_cut(maps: np.ndarray, masks: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """Per map: whether the value at the rank-accuracy cut (|G|) or the top-k cut (positive part) is tied."""
    def tied(values: np.ndarray, count: int) -> bool:
        ordered = np.sort(values.ravel())[::-1]
        return 0 < count < ordered.size and ordered[count - 1] == ordered[count]

    return {"relevance_rank_accuracy": np.array([tied(a, int(m.sum())) for a, m in zip(maps, masks)]),
            "top_k_intersection": np.array([tied(np.maximum(a, 0), k) for a in maps])}


def compare(ours: dict[str, list[float]], theirs: dict, ties: dict[str, np.ndarray]) -> list[dict]:
    """Per metric: maps compared, max |ours - Quantus| over all and over maps untied at the cut, undefined counts."""
    rows = []
    for name, values in ours.items():
        mine, other = np.array(values, dtype=float), np.array(theirs[name], dtype=float)
        both = np.isfinite(mine) & np.isfinite(other)
        untied = both & ~ties.get(name, np.zeros(len(mine), bool))
        difference = np.abs(mine - other)
        rows.append({"metric": name, "maps": len(mine), "compared": int(both.sum()),
                     "max_abs_diff": float(difference[both].max()) if both.any() else None,
                     "untied": int(untied.sum()),
                     "max_abs_diff_untied": float(difference[untied].max()) if untied.any() else None,
                     "undefined_ours": int((~np.isfinite(mine)).sum()),
                     "undefined_quantus": int((~np.isfinite(other)).sum())})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--venv", type=Path, default=WORK_DIR / "quantus_venv")
    parser.add_argument("--root", type=Path, default=WORK_DIR / "bench_scorecard")
    parser.add_argument("--subset", type=int, default=0)
    parser.add_argument("--split", default="train")
    parser.add_argument("--patients", type=int, default=30)
    parser.add_argument("--images-total", type=int, default=48)
    parser.add_argument("--epochs", type=int, default=6)
    args = parser.parse_args()

    from bnp_cxr.attribution.methods import ALL_METHODS, MethodConfig, attribution_maps
    from bnp_cxr.evaluation.evaluate import load_run_model
    from bnp_cxr.workspace import RunDir

    python, why = quantus_python(args.venv)
    if python is None:
        report("quantus_check", {"installed": False, "reason": why}, [], ["metric"])
        return
    info = prepare_runs(args.root, [args.size], args)[0]
    images = [image for image in scored_images(info, args) if image.lung_mask is not None]
    model = load_run_model(RunDir(info.path).model)
    batch = np.stack([image.image for image in images])
    method_names, maps = [], []
    for method in ALL_METHODS:
        maps.append(attribution_maps(model, batch, method, config=MethodConfig()))
        method_names += [method] * len(images)
    maps = np.concatenate(maps).astype(np.float64)
    masks = np.tile(np.stack([image.lung_mask for image in images]), (len(ALL_METHODS), 1, 1))
    k = int(np.ceil(0.1 * maps[0].size))
    ours = our_values(maps, masks, k)
    with tempfile.TemporaryDirectory() as folder:
        arrays, result = Path(folder) / "arrays.npz", Path(folder) / "quantus.json"
        np.savez(arrays, a=maps[:, None], s=masks[:, None].astype(np.float64),
                 x=np.repeat(batch, len(ALL_METHODS), axis=0).transpose(0, 3, 1, 2).astype(np.float64), k=k)
        subprocess.run([str(python), "-c", QUANTUS_SCRIPT, str(arrays), str(result)], check=True)
        theirs = json.loads(result.read_text())
    rows = compare(ours, theirs, ties_at_cut(maps, masks, k))
    report("quantus_check", {"installed": True, "quantus": theirs["version"], "quantus_numpy": theirs["numpy"],
                             "size": args.size, "images": len(images), "methods": list(ALL_METHODS), "top_k": k},
           rows, ["metric", "maps", "compared", "max_abs_diff", "untied", "max_abs_diff_untied", "undefined_ours",
                  "undefined_quantus"])


if __name__ == "__main__":
    main()
