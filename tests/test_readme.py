"""The README's quick start is what CI runs, and its example manifests follow the documented schema."""

import re
from pathlib import Path

from bnp_cxr.manifest import load_manifest

ROOT = Path(__file__).resolve().parents[1]


def quick_start_commands() -> list[str]:
    section = (ROOT / "README.md").read_text().split("## Quick start", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    return [line for block in blocks for line in block.splitlines() if line and not line.startswith("#")]


def test_quick_start_is_two_commands_and_ci_runs_the_second():
    commands = quick_start_commands()
    assert len(commands) == 2
    assert "tools/make_tfrecords.py" in commands[0] and "tools/train.py" in commands[0]
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert commands[1] in ci_lines


def test_example_manifests_parse(tmp_path):
    examples = ROOT / "data_manifests"
    inline = load_manifest(examples / "example_manifest.csv")
    # The example image files do not exist here: every row is rejected for that reason alone.
    assert inline.n_rows == 4 and {r.reason for r in inline.rejects} == {"file_not_found"}
    paired = load_manifest(examples / "example_manifest_images.csv", examples / "example_labs.csv")
    assert paired.labs_summary["invalid"] == 0 and {r.reason for r in paired.rejects} == {"file_not_found"}
