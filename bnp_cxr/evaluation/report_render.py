"""Report blocks -> report.md and a self-contained report.html; the calibration figure.

A report is a list of blocks, plain JSON so that later stages can store theirs in the run's report.json:
["h", level, text], ["p", text], ["list", [items]], ["table", [headers], [[cells]]], ["figure", path, caption].
Figure paths are absolute or relative to the run folder. The Markdown links figures by relative path;
the HTML embeds PNGs as base64 data URIs, so it is one file with no external reference and no network use.
"""

from __future__ import annotations

import base64
import html
import math
import os
import re
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

CALIBRATION_PLOT = "calibration.png"
CALIBRATION_BINS = 10
STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 60rem; margin: 2rem auto;
       padding: 0 1rem; line-height: 1.45; color: #1b1b1b; }
table { border-collapse: collapse; margin: 0.6rem 0 1rem; font-size: 0.9rem; }
th, td { border: 1px solid #c8c8c8; padding: 0.2rem 0.5rem; text-align: left; vertical-align: top; }
th { background: #f0f0f0; }
figure { margin: 1rem 0; }
figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 0.85rem; color: #444; }
.missing { color: #a00; }
"""


def _figure_path(path: str, run_dir: Path) -> Path:
    candidate = Path(path)
    return candidate if candidate.is_absolute() else run_dir / candidate


def _cell_md(value: object) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def to_markdown(blocks: list, run_dir: str | os.PathLike) -> str:
    """The blocks as Markdown; figures as links relative to the run folder."""
    run_dir = Path(run_dir)
    out: list[str] = []
    for block in blocks:
        kind = block[0]
        if kind == "h":
            out.append(f"{'#' * int(block[1])} {block[2]}")
        elif kind == "p":
            out.append(block[1])
        elif kind == "list":
            out.append("\n".join(f"- {item}" for item in block[1]))
        elif kind == "table":
            headers, rows = block[1], block[2]
            lines = ["| " + " | ".join(map(_cell_md, headers)) + " |", "|" + "---|" * len(headers)]
            lines += ["| " + " | ".join(map(_cell_md, row)) + " |" for row in rows]
            out.append("\n".join(lines))
        elif kind == "figure":
            target = _figure_path(block[1], run_dir)
            relative = Path(os.path.relpath(target, run_dir)).as_posix()
            alt = re.sub(r"[\[\]]", "", block[2])  # brackets would end the link text
            out.append(f"![{alt}]({relative})\n\n*{block[2]}*")
        else:
            raise ValueError(f"unknown report block {kind!r}")
    return "\n\n".join(out) + "\n"


def _inline_html(text: str) -> str:
    """Escaped text with `code` spans (the only inline markup the report uses)."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(str(text)))


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def data_uri(path: Path) -> str | None:
    """A PNG file as a data: URI, or None when it is missing or not a PNG."""
    if path.suffix.lower() != ".png" or not path.is_file():
        return None
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _figure_html(path: str, caption: str, run_dir: Path) -> str:
    uri = data_uri(_figure_path(path, run_dir))
    if uri is None:
        return f'<p class="missing">figure not available: {html.escape(Path(path).name)}</p>'
    return (f'<figure><img alt="{html.escape(caption)}" src="{uri}">'
            f"<figcaption>{_inline_html(caption)}</figcaption></figure>")


def to_html(blocks: list, run_dir: str | os.PathLike, title: str) -> str:
    """The blocks as one self-contained HTML page (inline style, figures as data URIs)."""
    run_dir = Path(run_dir)
    body: list[str] = []
    for block in blocks:
        kind = block[0]
        if kind == "h":
            level = int(block[1])
            body.append(f'<h{level} id="{_slug(block[2])}">{_inline_html(block[2])}</h{level}>')
        elif kind == "p":
            body.append(f"<p>{_inline_html(block[1])}</p>")
        elif kind == "list":
            body.append("<ul>" + "".join(f"<li>{_inline_html(item)}</li>" for item in block[1]) + "</ul>")
        elif kind == "table":
            head = "".join(f"<th>{_inline_html(cell)}</th>" for cell in block[1])
            rows = "".join("<tr>" + "".join(f"<td>{_inline_html(cell)}</td>" for cell in row) + "</tr>"
                           for row in block[2])
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif kind == "figure":
            body.append(_figure_html(block[1], block[2], run_dir))
        else:
            raise ValueError(f"unknown report block {kind!r}")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def calibration_bins(true: np.ndarray, pred: np.ndarray, bins: int = CALIBRATION_BINS) -> list[dict]:
    """Rows with both values, in `bins` quantile bins of the prediction: mean predicted, mean observed, 95 % CI."""
    keep = np.isfinite(true) & np.isfinite(pred)
    true, pred = true[keep], pred[keep]
    if true.size == 0:
        return []
    order = np.argsort(pred, kind="stable")
    rows = []
    for part in np.array_split(order, min(bins, true.size)):
        observed = true[part]
        half = 1.96 * observed.std(ddof=1) / math.sqrt(part.size) if part.size > 1 else math.nan
        rows.append({"n": int(part.size), "predicted": float(pred[part].mean()), "observed": float(observed.mean()),
                     "ci_low": float(observed.mean() - half), "ci_high": float(observed.mean() + half)})
    return rows


def calibration_figure(rows: list[dict], path: str | os.PathLike, name: str = "BNPP") -> None:
    """Observed vs predicted mean log10 value per prediction decile, with 95 % CIs and the identity line."""
    figure = Figure(figsize=(5.2, 5.2), dpi=120, layout="constrained")
    ax = figure.add_subplot()
    predicted = [row["predicted"] for row in rows]
    observed = [row["observed"] for row in rows]
    errors = np.array([[row["observed"] - row["ci_low"], row["ci_high"] - row["observed"]] for row in rows]).T
    values = [*predicted, *observed] or [0.0, 1.0]
    low, high = min(values) - 0.2, max(values) + 0.2
    ax.plot([low, high], [low, high], color="0.5", lw=1, ls="--", label="perfect calibration")
    ax.errorbar(predicted, observed, yerr=np.nan_to_num(errors), fmt="o", color="#1f5fa8", capsize=3,
                label="mean per prediction decile (95 % CI)")
    ax.set(xlim=(low, high), ylim=(low, high), aspect="equal", xlabel=f"predicted log10 {name} (mean of the bin)",
           ylabel=f"observed log10 {name} (mean of the bin)")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title(f"Calibration: log10 {name}, {sum(row['n'] for row in rows)} test images", fontsize=10)
    figure.savefig(path)
