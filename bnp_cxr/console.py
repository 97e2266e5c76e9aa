"""A clean console: TensorFlow's C++ start-up lines stay out of the tools' output unless the user asks for them.

TensorFlow writes its start-up lines (oneDNN notice, "Could not find cuda drivers", cuInit errors, the CPU
feature guard) through absl before its own log level applies, so `TF_CPP_MIN_LOG_LEVEL` alone does not
silence them. `quiet_tensorflow()` therefore imports TensorFlow and queries its devices with file
descriptor 2 pointed at a temporary file, drops the known start-up lines and passes every other line on.
`BNP_CXR_TF_LOGS=1` turns all of this off.
This module imports only the standard library, so spawned workers can call `quiet_environment` cheaply.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
from typing import Iterator

TF_LOGS_ENV = "BNP_CXR_TF_LOGS"
# TensorFlow's own levels: 0 all, 1 no INFO, 2 no WARNING, 3 no ERROR. Errors stay visible.
QUIET_TF_LEVEL = "2"
# The start-up lines of TensorFlow / XLA / absl on a machine with or without a GPU.
CHATTER_PATTERNS = (
    r"All log messages before absl::InitializeLog\(\) is called",
    r"oneDNN custom operations are on",
    r"Could not find cuda drivers",
    r"failed call to cuInit",
    r"cpu_feature_guard",
    r"This TensorFlow binary is optimized to use available CPU instructions",
    r"To enable the following instructions: .* rebuild TensorFlow",
    r"Unable to register cu(DNN|FFT|BLAS) factory",
    r"computation placer already registered",
    r"TF-TRT Warning: Could not find TensorRT",
    r"successful NUMA node read from SysFS",
    r"Created device /job:localhost",
)
CHATTER = re.compile("|".join(CHATTER_PATTERNS))


def wants_tf_logs() -> bool:
    """True when the user asked to see TensorFlow's own logs (BNP_CXR_TF_LOGS=1)."""
    return os.environ.get(TF_LOGS_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def quiet_environment() -> None:
    """Set TensorFlow's C++ log level for this process and the processes it starts (before TF is imported)."""
    if not wants_tf_logs():
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", QUIET_TF_LEVEL)


def drop_chatter(text: str) -> str:
    """Text without TensorFlow's known start-up lines."""
    return "".join(line for line in text.splitlines(keepends=True) if not CHATTER.search(line))


@contextlib.contextmanager
def _stderr_to_file() -> Iterator[list[str]]:
    """Point file descriptor 2 (C++ code writes there directly) at a temporary file; yield its text at exit."""
    sys.stderr.flush()
    saved = os.dup(2)
    captured: list[str] = []
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield captured
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            captured.append(sink.read().decode("utf-8", errors="replace"))


def quiet_tensorflow() -> None:
    """Import TensorFlow and list its devices without the start-up chatter (all of it with BNP_CXR_TF_LOGS=1).

    Call it first thing in a command that uses TensorFlow; anything else TensorFlow printed is passed on.
    """
    quiet_environment()
    if "tensorflow" in sys.modules:
        return
    if wants_tf_logs():
        import tensorflow as tf

        tf.config.list_physical_devices()
        return
    with _stderr_to_file() as captured:
        import tensorflow as tf

        tf.config.list_physical_devices()  # the cuInit attempt happens here, still inside the redirect
    sys.stderr.write(drop_chatter(captured[0]))
    logging.getLogger("tensorflow").setLevel(logging.ERROR)  # Python-side deprecation notes of tf internals
    with contextlib.suppress(ImportError):
        from absl import logging as absl_logging

        absl_logging.set_verbosity(absl_logging.ERROR)

