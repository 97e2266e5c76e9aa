"""Seconds per SimCLR pretraining step of the CPU recipe, with oneDNN allowed each instruction set in turn.

The default pretraining (training.pretrain.simclr_step: 128 images, two views each at --size, the small CNN
reading them at the recipe's 128 px, projection head, Adam) is most of the default run's time, and that time
differs twofold between 2-core CPUs with and without AVX-512 (README). oneDNN, which runs TensorFlow's CPU
convolutions, picks its kernels by the instruction sets it finds, at most the one named by ONEDNN_MAX_CPU_ISA
(oneDNN's documented cap, read when it starts: each row is a fresh process). Capping an AVX-512 CPU at AVX2
shows what AVX-512 itself is worth there, apart from the CPU generation. Per row: the median seconds of --steps
steps after a warm-up, of the whole step and of its two random views alone (the rest is the network's
forward, backward and update). Random images: the cost does not depend on the pixels. --view-res times the
views at --size (input: area-averaged to 128 px inside the model) or made at 128 px (model), one row each.

    python bench/pretrain_step.py --isas default AVX2 --name pretrain_step_isa
    python bench/pretrain_step.py --isas default --view-res input model --name pretrain_step_views
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
from common import report  # noqa: E402

from bnp_cxr.training.config import PRETRAIN_VIEW_RESOLUTIONS  # noqa: E402  (no TensorFlow: the rows' processes load it)

ISA_VARIABLE = "ONEDNN_MAX_CPU_ISA"


def median_seconds(function, arguments, steps: int) -> float:
    """Median wall seconds of `function(*arguments(k))` for k = 1..steps, after one warm-up call (tracing)."""
    function(*arguments(0))
    times = []
    for k in range(1, steps + 1):
        started = time.perf_counter()
        result = function(*arguments(k))
        float(result[0] if isinstance(result, tuple) else result)  # wait for the value
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def time_steps(size: int, steps: int, view_res: str) -> dict:
    """Seconds per pretraining step and per pair of views, in this process (its ISA cap already set)."""
    import dataclasses

    import keras
    import numpy as np
    import tensorflow as tf

    from bnp_cxr.models import build_model
    from bnp_cxr.training.config import CPU_MODEL_PX
    from bnp_cxr.training.pretrain import PRETRAIN, contrastive_view, projection_head, simclr_step, view_encoder

    rng = np.random.default_rng(0)
    data = tf.constant(rng.random((2 * PRETRAIN.batch_size, size, size, 1)).astype(np.float16))
    settings = dataclasses.replace(PRETRAIN, view_res=view_res)
    keras.utils.set_random_seed(0)
    encoder = view_encoder(build_model("small_cnn", size, model_px=min(CPU_MODEL_PX, size)), settings)
    step = simclr_step(encoder, projection_head(), keras.optimizers.Adam(PRETRAIN.lr), data, settings)
    view_px = encoder.input.shape[1]

    @tf.function
    def views(indices, seed):
        chosen = tf.cast(tf.gather(data, indices), tf.float32)
        pair = tf.random.experimental.stateless_split(seed, 2)
        return (tf.reduce_sum(contrastive_view(chosen, pair[0], settings, view_px))
                + tf.reduce_sum(contrastive_view(chosen, pair[1], settings, view_px)))

    def arguments(k):
        return (tf.constant(rng.permutation(len(data))[:PRETRAIN.batch_size]), tf.constant([0, k], tf.int64))

    step_s, views_s = median_seconds(step, arguments, steps), median_seconds(views, arguments, steps)
    return {"view_px": view_px, "step_s": round(step_s, 3), "views_s": round(views_s, 3),
            "network_s": round(step_s - views_s, 3),
            "tensorflow_onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--isas", nargs="+", default=["default", "AVX2"],
                        help=f"{ISA_VARIABLE} values, one row each; 'default' leaves it unset (all the CPU has)")
    parser.add_argument("--view-res", nargs="+", default=["input"], choices=PRETRAIN_VIEW_RESOLUTIONS,
                        help="the views' resolution (TrainConfig.pretrain_view_res), one row each per ISA")
    parser.add_argument("--size", type=int, default=256, help="image size, px (the records' size)")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per row, after one warm-up")
    parser.add_argument("--name", default="pretrain_step")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(time_steps(args.size, args.steps, args.view_res[0])))
        return
    rows = []
    for isa in args.isas:
        env = {key: value for key, value in os.environ.items() if key != ISA_VARIABLE}
        if isa != "default":
            env[ISA_VARIABLE] = isa
        for view_res in args.view_res:
            done = subprocess.run([sys.executable, __file__, "--child", "--size", str(args.size), "--steps",
                                   str(args.steps), "--view-res", view_res], env=env, capture_output=True, text=True)
            if done.returncode:
                sys.exit(f"error: the {isa} / {view_res} row failed:\n{done.stderr[-2000:]}")
            rows.append({"onednn_max_cpu_isa": isa, "view_res": view_res,
                         **json.loads(done.stdout.strip().splitlines()[-1])})
    base = rows[0]["step_s"]
    for row in rows:
        row["step_vs_first"] = round(row["step_s"] / base, 3)
    report(args.name, {"size_px": args.size, "steps": args.steps}, rows,
           ["onednn_max_cpu_isa", "view_res", "view_px", "step_s", "views_s", "network_s", "step_vs_first"])


if __name__ == "__main__":
    main()
