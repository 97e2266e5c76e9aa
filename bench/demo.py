"""README command 1 after install, timed: the demo pipeline in a fresh folder, step by step.

Reads the first quick-start command of README.md, drops its `pip install` step and runs each
`python tools/NAME.py ...` step exactly as written, in a new temporary folder (so the phantom cohort,
records, run and attribution are made from scratch), as a new user's shell would: no TensorFlow log
settings and no site salt in the environment. Reports per step the wall seconds, the CPU seconds of the
step's processes (user + system, workers included: the machine's load inflates wall time, not these),
and the 1-minute load average before and after; then the phantom results (test AUC and r with their
patient-bootstrap CIs, goals >= 0.8 and >= 0.6), whether any TensorFlow start-up line reached the
console, and the run report. With headless Chromium on PATH it renders report.html and saves a
screenshot next to the JSON. Goal: <= 180 s in total on a 2-core CPU.

    python bench/demo.py
    python bench/demo.py --keep          # keep the temporary folder and print where it is
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import RESULTS_DIR, report

ROOT = Path(__file__).resolve().parents[1]
GOAL_S = 180.0
GOALS = {"auc_combined": 0.8, "pearson_r_log10_bnpp": 0.6}
# TensorFlow's start-up lines (bnp_cxr.console drops them; here they are looked for independently).
CHATTER = re.compile(r"absl::InitializeLog|oneDNN custom operations|Could not find cuda drivers|failed call to cuInit|"
                     r"cpu_feature_guard|rebuild TensorFlow with the appropriate compiler flags")
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "headless_shell")


def readme_steps() -> list[list[str]]:
    """The `python tools/...` steps of the README's first quick-start command, as argument lists."""
    section = (ROOT / "README.md").read_text(encoding="utf-8").split("## Quick start", 1)[1].split("\n## ", 1)[0]
    block = re.findall(r"```bash\n(.*?)```", section, flags=re.S)[0]
    command = next(line for line in block.splitlines() if line.strip() and not line.startswith("#"))
    steps = [shlex.split(part) for part in command.split("&&")]
    return [step for step in steps if step[:2] != ["pip", "install"]]


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_step(step: list[str], cwd: Path, env: dict) -> dict:
    """Run one step (tools/ paths resolved in this checkout); its wall and CPU seconds and console output."""
    argv = [sys.executable if step[0] == "python" else step[0],
            *(str(ROOT / arg) if arg.startswith("tools/") else arg for arg in step[1:])]
    load_before, cpu_before, started = os.getloadavg()[0], _cpu_seconds(), time.perf_counter()
    result = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    output = result.stdout + result.stderr
    if result.returncode != 0:
        raise SystemExit(f"step failed ({result.returncode}): {shlex.join(step)}\n{output[-3000:]}")
    return {"step": shlex.join(step), "wall_s": round(wall, 1), "cpu_s": round(_cpu_seconds() - cpu_before, 1),
            "load_1min_before": round(load_before, 2), "load_1min_after": round(os.getloadavg()[0], 2),
            "chatter_lines": sum(bool(CHATTER.search(line)) for line in output.splitlines()),
            "stdout_tail": result.stdout[-600:]}


def phantom_results(work: Path) -> dict:
    """Test AUC (combined label) and r (log10 BNPP) of the demo's run, with CIs, against the goals."""
    metrics = json.loads((work / "runs" / "size256" / "metrics.json").read_text())["metrics"]
    results = {}
    for name, goal in GOALS.items():
        entry = metrics[name]
        results[name] = {"estimate": entry["estimate"], "ci": [entry["ci_low"], entry["ci_high"]], "goal": goal,
                         "met": entry["estimate"] is not None and entry["estimate"] >= goal}
    return results


def render_report(html: Path) -> dict:
    """Screenshot report.html with headless Chromium when one is on PATH."""
    browser = next((shutil.which(name) for name in CHROMIUM_NAMES if shutil.which(name)), None)
    if browser is None:
        return {"chromium": f"absent (none of {', '.join(CHROMIUM_NAMES)} on PATH): not rendered"}
    shot = RESULTS_DIR / "demo_report.png"
    result = subprocess.run([browser, "--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars",
                             f"--screenshot={shot}", "--window-size=1280,4000", html.as_uri()],
                            capture_output=True, text=True, timeout=120)
    return {"chromium": browser, "screenshot": str(shot.relative_to(ROOT)) if shot.is_file() else None,
            "chromium_returncode": result.returncode}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("--name", default="demo", help="result name (default: %(default)s)")
    args = parser.parse_args(argv)
    steps = readme_steps()
    env = {key: value for key, value in os.environ.items()
           if key not in ("TF_CPP_MIN_LOG_LEVEL", "BNP_CXR_TF_LOGS", "BNP_CXR_SALT", "BNP_CXR_SALT_FILE")}
    folder = Path(tempfile.mkdtemp(prefix="bnp-cxr-demo-"))
    load_start = os.getloadavg()
    rows = [run_step(step, folder, env) for step in steps]
    load_end = os.getloadavg()
    run_dir = folder / "work" / "runs" / "size256"
    html = run_dir / "report.html"
    result = {"readme_command": " && ".join(row["step"] for row in rows), "cpus": os.cpu_count(),
              "load_avg_start": [round(v, 2) for v in load_start], "load_avg_end": [round(v, 2) for v in load_end],
              "total_wall_s": round(sum(row["wall_s"] for row in rows), 1),
              "total_cpu_s": round(sum(row["cpu_s"] for row in rows), 1), "goal_s": GOAL_S,
              "phantom": phantom_results(folder / "work"),
              "chatter_lines": sum(row["chatter_lines"] for row in rows),
              "report_written": html.is_file() and (run_dir / "report.md").is_file(),
              "report_path_printed": str(html.relative_to(folder)) in rows[-1]["stdout_tail"]
                                     or str(html) in rows[-1]["stdout_tail"],
              **render_report(html)}
    result["goal_met"] = result["total_wall_s"] <= GOAL_S
    for row in rows:
        row.pop("stdout_tail")
    report(args.name, result, rows, ["step", "wall_s", "cpu_s", "load_1min_before", "load_1min_after",
                                     "chatter_lines"])
    if args.keep:
        print(f"kept: {folder}")
    else:
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
