"""XRAI time per image: saliency.core.XRAI (the library's own call) vs bnp_cxr.attribution.xrai impl="fast".

Same model, images and parameters (greedy 'full' XRAI, 100 IG steps from both baselines, --batch-size
steps per model call) for both; per size the median seconds of segmentation, integrated gradients,
ranking and end to end, plus the floor: the model's own cost for the same 200 batched gradient
evaluations (prebuilt inputs, nothing else). Fast runs start with an empty segment cache. Every image
also checks that both give the same region ranks and maps (max abs diff). Images are phantom
radiographs (the cohort is generated when absent) letterboxed as the records writer does.

    python bench/xrai.py                               # 224, 512, 1024 px, 3 images, small_cnn random init
    python bench/xrai.py --sizes 256 --model work/runs/size256/model.keras
    python bench/xrai.py --reference-images 3 3 1      # fewer reference runs at 1024 (they take minutes)
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np

from common import phantom_manifest, report

from bnp_cxr.workspace import COHORT_DIR

STAGES = ("segmentation_s", "ig_s", "ranking_s", "total_s")


def phantom_images(cohort_dir: Path, count: int, size: int) -> list[np.ndarray]:
    """The first `count` test-split phantom radiographs as model inputs float32 [size, size, 1] in [0, 1]."""
    from bnp_cxr.data import imaging
    from bnp_cxr.data.manifest import load_manifest
    from bnp_cxr.records.prepare import letterbox_geometry, model_image

    manifest = load_manifest(*phantom_manifest(cohort_dir, workers=2))
    rows = sorted((row for row in manifest.rows if row.split == "test"), key=lambda row: row.abs_path)[:count]
    images = []
    for row in rows:
        pixels = imaging.read_radiograph(row.abs_path).pixels
        stored = model_image(pixels, letterbox_geometry(*pixels.shape, size))
        images.append((stored.astype(np.float32) / np.iinfo(stored.dtype).max)[..., None])
    return images


def gradient_floor(gradients, image: np.ndarray, steps: int, batch_size: int, repeats: int = 2) -> float:
    """Best seconds for 2 x `steps` batched input-gradient evaluations on prebuilt inputs (the model's own cost)."""
    import tensorflow as tf

    chunks = [min(batch_size, steps - start) for start in range(0, steps, batch_size)]
    batches = [tf.constant(np.repeat(image[None] * alpha, chunk, axis=0)) for alpha in (0.5, 1.0) for chunk in chunks]
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        for batch in batches:
            grads, _ = gradients.input_gradients(batch)
            tf.reduce_sum(grads, axis=0).numpy()  # one sync per call, a small result back, as the fast path
        best = min(best, time.perf_counter() - started)
    return best


def build(size: int, model_path: Path | None, target: str):
    """The model and its compiled gradients at this size (small_cnn with a fixed random init unless given)."""
    import keras

    from bnp_cxr.attribution.callbacks import ModelGradients
    from bnp_cxr.models import build_model, load_model

    if model_path is not None:
        model = load_model(model_path)
    else:
        keras.utils.set_random_seed(0)
        model = build_model("small_cnn", size)
    return model, ModelGradients(model, target)


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def bench_size(size: int, args: argparse.Namespace, reference_images: int) -> dict:
    """One table row: median stage seconds of both implementations at `size` px."""
    from bnp_cxr.attribution.xrai import clear_segment_cache, xrai_map

    model, gradients = build(size, args.model, args.target)
    size = int(model.input_shape[1])
    images = phantom_images(args.cohort, args.images, size)
    run = dict(target=args.target, batch_size=args.batch_size, steps=args.steps, gradients=gradients)
    # Warm-up on another image traces every compiled function both paths use (full and last batch shapes).
    warm = np.clip(images[0][::-1] + 0.01, 0, 1)
    xrai_map(model, warm, impl="fast", **run)
    gradients.call_model_function(np.repeat(warm[None], args.batch_size, axis=0), None, ["INPUT_OUTPUT_GRADIENTS"])
    if args.steps % args.batch_size:
        gradients.call_model_function(np.repeat(warm[None], args.steps % args.batch_size, axis=0), None,
                                      ["INPUT_OUTPUT_GRADIENTS"])
    per_image = []
    for index, image in enumerate(images):
        clear_segment_cache()
        started = time.perf_counter()
        ours = xrai_map(model, image, impl="fast", **run)
        record = {"size_px": size, "image": index, **{f"fast_{key}": value for key, value in ours.timings.items()}}
        record["fast_total_s"] = time.perf_counter() - started
        record["floor_s"] = gradient_floor(gradients, image, args.steps, args.batch_size, repeats=1)
        if index < reference_images:
            theirs = xrai_map(model, image, impl="reference", **run)
            record.update({f"ref_{stage}": value for stage, value in theirs.timings.items()})
            base_diff = np.abs(ours.base_attribution - theirs.base_attribution).max()
            record.update(same_ranks=bool(np.array_equal(ours.ranks, theirs.ranks)),
                          max_map_diff=float(np.abs(ours.attribution - theirs.attribution).max()),
                          max_base_rel_diff=float(base_diff / (np.abs(theirs.base_attribution).max() or 1.0)))
        per_image.append(record)
        print(f"{size} px image {index}: " + ", ".join(f"{key} {value:.2f}" for key, value in record.items()
                                                       if key.endswith("total_s") or key == "floor_s"), flush=True)
    row = {"size_px": size, "images": len(images), "reference_images": min(reference_images, len(images))}
    for stage in STAGES:
        for name in ("ref", "fast"):
            row[f"{name}_{stage}"] = median([r[f"{name}_{stage}"] for r in per_image if f"{name}_{stage}" in r])
    paired = [r for r in per_image if "ref_total_s" in r]
    if paired:  # speedups on the images both ran, each image against itself
        row["seg_rank_speedup"] = median([(r["ref_segmentation_s"] + r["ref_ranking_s"])
                                          / (r["fast_segmentation_s"] + r["fast_ranking_s"]) for r in paired])
        row["e2e_speedup"] = median([r["ref_total_s"] / r["fast_total_s"] for r in paired])
        row["same_ranks"] = all(r["same_ranks"] for r in paired)
        row["max_map_diff"] = max(r["max_map_diff"] for r in paired)
        row["max_base_rel_diff"] = max(r["max_base_rel_diff"] for r in paired)
    row["floor_s"] = median([r["floor_s"] for r in per_image])
    # Each image against the floor measured right after it: the machine's load drifts over minutes.
    row["fast_over_floor"] = median([r["fast_total_s"] / r["floor_s"] for r in per_image])
    row["per_image"] = per_image
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 512, 1024])
    parser.add_argument("--images", type=int, default=3)
    parser.add_argument("--reference-images", type=int, nargs="+",
                        help="reference runs per size (one number, or one per size; default: --images)")
    parser.add_argument("--model", type=Path, help="a saved model (its input size replaces --sizes)")
    parser.add_argument("--target", default="bnpp", choices=["bnp", "bnpp"])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--cohort", type=Path, default=COHORT_DIR)
    parser.add_argument("--name", default="xrai", help="results file bench/results/NAME.json")
    args = parser.parse_args()
    sizes = args.sizes if args.model is None else [0]
    reference_images = args.reference_images or [args.images]
    if len(reference_images) not in (1, len(sizes)):
        parser.error("--reference-images takes one number or one per size")
    reference_images = reference_images * len(sizes) if len(reference_images) == 1 else reference_images

    import tensorflow as tf

    load_before = os.getloadavg()
    started = time.perf_counter()
    rows = [bench_size(size, args, count) for size, count in zip(sizes, reference_images)]
    at_1024 = next((row for row in rows if row["size_px"] == 1024 and row.get("seg_rank_speedup")), None)
    report(args.name, {
        "model": str(args.model) if args.model else "small_cnn random init (seed 0)",
        "target": args.target, "batch_size": args.batch_size, "steps": args.steps,
        "device": "GPU" if tf.config.list_physical_devices("GPU") else "CPU",
        "load_average_before": [round(value, 2) for value in load_before],
        "load_average_after": [round(value, 2) for value in os.getloadavg()],
        "wall_s": round(time.perf_counter() - started, 1),
        "goal_seg_rank_speedup_at_1024": 20,
        "meets_seg_rank_goal": at_1024["seg_rank_speedup"] >= 20 if at_1024 else None,
    }, rows, ["size_px", "images", "reference_images", "ref_segmentation_s", "fast_segmentation_s", "ref_ig_s",
              "fast_ig_s", "ref_ranking_s", "fast_ranking_s", "ref_total_s", "fast_total_s", "floor_s",
              "seg_rank_speedup", "e2e_speedup", "fast_over_floor", "same_ranks", "max_map_diff"])


if __name__ == "__main__":
    main()
