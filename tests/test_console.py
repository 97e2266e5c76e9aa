"""A clean console (bnp_cxr.console): no TensorFlow start-up chatter in the tools' output, workers included,
unless BNP_CXR_TF_LOGS=1 asks for it."""

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from bnp_cxr.console import CHATTER, TF_LOGS_ENV, drop_chatter

ROOT = Path(__file__).resolve().parents[1]
# Lines TensorFlow 2.x prints at start-up on machines with and without a GPU.
CHATTER_LINES = (
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "I0000 00:00:1795808089.352072     337 port.cc:153] oneDNN custom operations are on. You may see slightly "
    "different numerical results due to floating-point round-off errors from different computation orders.",
    "I0000 00:00:1795808089.352390     337 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will "
    "not be used.",
    "E0000 00:00:1795808102.009871     337 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: Failed "
    "call to cuInit: UNKNOWN ERROR (303)",
    "I0000 00:00:1795808089.594377     337 cpu_feature_guard.cc:227] This TensorFlow binary is optimized to use "
    "available CPU instructions in performance-critical operations.",
    "To enable the following instructions: AVX2 AVX512F FMA, in other operations, rebuild TensorFlow with the "
    "appropriate compiler flags.",
)
USER_LINES = ("error: no trained runs in work/runs", "records:  50%|#####     | 10/20", "note: demo salt in use")


@pytest.mark.parametrize("line", CHATTER_LINES)
def test_chatter_lines_are_dropped(line):
    assert CHATTER.search(line) and drop_chatter(line + "\n") == ""


def test_other_lines_are_kept_in_order():
    text = "\n".join([USER_LINES[0], CHATTER_LINES[1], USER_LINES[1], CHATTER_LINES[3], USER_LINES[2]]) + "\n"
    assert drop_chatter(text) == "\n".join(USER_LINES) + "\n"


def run_tool(name: str, *args: str, cwd: Path, logs: bool = False) -> subprocess.CompletedProcess:
    """A tool in a fresh interpreter with no TensorFlow log settings inherited from this one."""
    env = {key: value for key, value in os.environ.items() if key not in ("TF_CPP_MIN_LOG_LEVEL", TF_LOGS_ENV)}
    if logs:
        env[TF_LOGS_ENV] = "1"
    return subprocess.run([sys.executable, str(ROOT / "tools" / f"{name}.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def chatter_in(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in (result.stdout + result.stderr).splitlines() if CHATTER.search(line)]


@pytest.mark.slow
def test_records_tool_with_worker_processes_prints_no_chatter(small_cohort, tmp_path):
    result = run_tool("make_tfrecords", "--manifest", str(small_cohort / "manifest.csv"), "--labs",
                      str(small_cohort / "labs.csv"), "--out", str(tmp_path / "records"), "--sizes", "64",
                      "--workers", "2", "--no-progress", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "manifest rows" in result.stdout  # the tool's own output is still there
    assert chatter_in(result) == []


def test_an_error_stays_visible_and_chatter_does_not(tmp_path):
    result = run_tool("evaluate", "--run-dir", str(tmp_path / "missing"), cwd=tmp_path)
    assert result.returncode == 2 and "error:" in result.stderr
    assert chatter_in(result) == []


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="the oneDNN notice is an x86 line")
def test_tf_logs_env_shows_the_chatter_again(tmp_path):
    result = run_tool("evaluate", "--run-dir", str(tmp_path / "missing"), cwd=tmp_path, logs=True)
    assert result.returncode == 2 and chatter_in(result)  # positive control: the patterns match real output


@pytest.mark.parametrize("tool", ["make_tfrecords", "evaluate", "predict", "train_lungs", "report", "make_manifest",
                                  "train", "attribute", "sanity_check", "resolution_study"])
def test_help_and_usage_errors_do_not_load_tensorflow(tool):
    """--help and a bad flag answer before TensorFlow's few seconds of import (and its chatter)."""
    probe = ("import importlib, sys\n"
             f"main = importlib.import_module('bnp_cxr.cli.{tool}').main\n"
             "for argv in (['--help'], ['--no-such-flag']):\n"
             "    try:\n"
             "        main(argv)\n"
             "    except SystemExit:\n"
             "        pass\n"
             "print('tensorflow loaded' if 'tensorflow' in sys.modules else 'tensorflow not loaded')\n")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT)
    assert result.stdout.strip().endswith("tensorflow not loaded"), result.stdout[-500:] + result.stderr[-500:]
