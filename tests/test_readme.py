"""The README's quick start is what CI runs, and its example manifests follow the documented schema."""

import re
from pathlib import Path

from bnp_cxr.data.manifest import load_manifest

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


def readme_tool_commands() -> list[tuple[str, list[str]]]:
    """(tool name, argument tokens) of every `python tools/NAME.py ...` in the README's and docs' bash blocks."""
    import shlex

    commands = []
    for path in (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))):
        for block in re.findall(r"```bash\n(.*?)```", path.read_text(), flags=re.S):
            text = re.sub(r"#[^\n]*", "", block.replace("\\\n", " "))
            for command in re.split(r"\n|&&|;", text):
                tokens = shlex.split(command)
                for index, token in enumerate(tokens[:-1]):
                    if token == "python" and tokens[index + 1].startswith("tools/"):
                        commands.append((Path(tokens[index + 1]).stem, tokens[index + 2:]))
    return commands


def test_readme_tool_commands_parse():
    """Every documented tool command parses with the tool's own parser (Beam options pass through)."""
    import importlib

    commands = readme_tool_commands()
    assert {"make_tfrecords", "train", "attribute", "predict"} <= {name for name, _ in commands}
    for name, arguments in commands:
        module = importlib.import_module(f"bnp_cxr.cli.{name}")
        parser = module.build_parser()
        parsed, unknown = parser.parse_known_args(arguments)
        if getattr(parsed, "runner", "local") != "local":  # make_tfrecords hands unknown flags to Beam
            unknown = []
        assert unknown == [], f"tools/{name}.py does not know {unknown} ({' '.join(arguments)})"
