"""The MIMIC flow report: counts at every step as flow.json, a CONSORT-style figure (flow.png) and text.

Counts only: no identifier or date of the dataset reaches these files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

from bnp_cxr.files import atomic_path, write_json

FLOW_JSON, FLOW_PNG = "flow.json", "flow.png"
EXCLUDED_TEXT = {"lateral": "lateral view", "other_view": "other non-frontal view",
                 "bad_study_datetime": "no valid study date/time", "duplicate_image": "listed twice",
                 "unreadable_header": "unreadable DICOM header", "missing_image": "missing on disk",
                 "conflicting_split": "patient in two official splits"}


def _groups(counts: Mapping) -> str:
    return f"{counts['images']:,} images, {counts['studies']:,} studies, {counts['patients']:,} patients"


def flow_lines(flow: Mapping) -> list[tuple[str, list[str]]]:
    """(box title, lines) of each step: listed, excluded, frontal, labevents, no lab, with lab, then the splits."""
    labs, window = flow["labevents"], f"+-{flow['window_hours']:g} h"
    items = "; ".join(f"{test} {', '.join(map(str, ids))}" for test, ids in flow["lab_items"].items())
    per_test = ", ".join(f"{test} {count:,}" for test, count in flow["with_lab"]["per_test"].items())
    excluded = [f"{EXCLUDED_TEXT[key]}: {count:,}" for key, count in flow["excluded"].items() if count]
    states = "positive {positive:,}, negative {negative:,}, unknown {unknown:,}"
    return [
        ("Radiographs listed", [_groups(flow["listed"])]),
        ("Excluded", excluded or ["none"]),
        ("Frontal (PA / AP) on disk", [_groups(flow["frontal"])]),
        ("labevents", [f"{labs['rows_read']:,} rows read", f"chosen items ({items}): {labs['chosen_items']:,}",
                       f"of patients with radiographs: {labs['with_radiographs']:,}",
                       "usable: " + ", ".join(f"{test} {count:,}" for test, count in labs["usable"].items()),
                       *(f"unusable, {reason}: {count:,}" for reason, count in labs["unusable"].items()),
                       f"same time, other result (set aside): {labs['conflicting']:,}"]),
        (f"No lab within {window}", [f"{flow['no_lab_in_window']:,} images"]),
        (f"With a lab within {window}", [_groups(flow["with_lab"]), f"per test: {per_test}",
                                         states.format(**flow["positivity"])]),
        *((f"{split} ({flow['split']} split)", [_groups(counts), states.format(**counts)])
          for split, counts in flow["splits"].items()),
    ]


def format_flow(flow: Mapping) -> str:
    """The flow report as indented text, for the terminal."""
    return "\n".join(f"{title}:\n" + "\n".join(f"    {line}" for line in lines) for title, lines in flow_lines(flow))


def _box(axes, x: float, y: float, title: str, lines: list[str]) -> None:
    axes.text(x, y, "\n".join([title, *lines]), ha="center", va="center", fontsize=7, wrap=True,
              bbox={"boxstyle": "round,pad=0.5", "facecolor": "white", "edgecolor": "0.3"}, transform=axes.transAxes)


def _arrow(axes, start: tuple[float, float], end: tuple[float, float]) -> None:
    axes.annotate("", xy=end, xytext=start, xycoords="axes fraction", arrowprops={"arrowstyle": "->", "color": "0.3"})


def plot_flow(flow: Mapping, path: Path) -> Path:
    """A CONSORT-style figure: the steps down the left, what leaves (and the labs that join) on the right."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = flow_lines(flow)
    figure, axes = plt.subplots(figsize=(10, 9))
    axes.axis("off")
    main, side = 0.25, 0.75
    for (title, lines), (x, y) in zip(steps, [(main, 0.94), (side, 0.80), (main, 0.66), (side, 0.38),
                                              (side, 0.53), (main, 0.40)]):
        _box(axes, x, y, title, lines)
    _arrow(axes, (main, 0.91), (main, 0.69))
    _arrow(axes, (main, 0.63), (main, 0.44))
    _arrow(axes, (main, 0.80), (side - 0.17, 0.80))
    _arrow(axes, (main, 0.53), (side - 0.10, 0.53))
    _arrow(axes, (side - 0.17, 0.40), (main + 0.14, 0.40))  # the paired labs join the images
    for index, (title, lines) in enumerate(steps[6:]):
        x = 0.17 + 0.33 * index
        _box(axes, x, 0.08, title, lines)
        _arrow(axes, (main, 0.35), (x, 0.12))
    figure.suptitle("MIMIC-CXR + MIMIC-IV: frontal radiographs with a natriuretic peptide result", fontsize=10)
    with atomic_path(path) as temp:
        figure.savefig(temp, format="png", dpi=120, metadata={"Software": None})
    plt.close(figure)
    return path


def write_flow(flow: Mapping, out_dir: Path) -> tuple[Path, Path]:
    """Write out_dir/flow.json and out_dir/flow.png; returns both paths."""
    write_json(out_dir / FLOW_JSON, flow)
    return out_dir / FLOW_JSON, plot_flow(flow, out_dir / FLOW_PNG)
