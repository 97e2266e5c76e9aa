"""The run report (bnp_cxr.evaluation.report): sections, self-contained HTML, CLAIM items, data source, CLI."""

import base64
import io
import json
import re
import shutil
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest
from archives import heart_records, write_run

from bnp_cxr.evaluation import report
from bnp_cxr.evaluation.evaluate import evaluate_run
from bnp_cxr.evaluation.report_attribution import (SCORECARD_AGREEMENT, SCORECARD_CSV, SCORECARD_PLOT,
                                                   add_attribution_to_reports, add_sanity_to_report)
from bnp_cxr.evaluation.report_study import add_study_to_reports
from bnp_cxr.evaluation.report_render import calibration_bins
from bnp_cxr.evaluation.report_sections import CLAIM_ITEMS
from bnp_cxr.workspace import RunDir

SECTIONS = ("Data", "Splits", "Label rules and thresholds", "Model and training", "Test metrics", "Worst errors",
            "Limitations", "Provenance", "CLAIM 2024 checklist")
SPLIT_SIZES = {"train": 6, "val": 4, "test": 12}
SIZE = 64  # px, the smallest records size


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    return heart_records(tmp_path_factory.mktemp("archive"), tmp_path_factory.mktemp("records"), SPLIT_SIZES,
                         (SIZE,), severities=lambda rng, count: np.linspace(0.05, 0.95, count), seed=4,
                         bnp_on=lambda index: index % 2 == 0, bnpp_on=lambda index: True)


@pytest.fixture(scope="module")
def evaluated_run(records, tmp_path_factory):
    """A finished tiny run (untrained small CNN) evaluated on its test split: the report is written then."""
    import keras

    from bnp_cxr.models import build_model

    keras.utils.set_random_seed(0)
    run_dir = write_run(tmp_path_factory.mktemp("runs") / "size64", build_model("small_cnn", SIZE), SIZE, records,
                        backbone="small_cnn", seed=0)
    evaluate_run(run_dir, n_boot=1000, seed=1)
    return run_dir


@pytest.fixture
def run_copy(evaluated_run, tmp_path):
    """A copy of the evaluated run that a test may change."""
    return shutil.copytree(evaluated_run, tmp_path / "size64")


class _Refs(HTMLParser):
    """Every src / href attribute of a page."""

    def __init__(self):
        super().__init__()
        self.refs: list[tuple[str, str, str]] = []

    def handle_starttag(self, tag, attrs):
        self.refs += [(tag, name, value or "") for name, value in attrs if name in ("src", "href", "srcset")]


def page_refs(path) -> list[tuple[str, str, str]]:
    parser = _Refs()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser.refs


def test_evaluation_writes_both_reports_with_every_section(evaluated_run):
    markdown = (evaluated_run / report.REPORT_MD).read_text(encoding="utf-8")
    headings = re.findall(r"^#{1,3} (.+)$", markdown, flags=re.M)
    assert [heading for heading in headings if heading in SECTIONS] == list(SECTIONS)
    predictions = pd.read_csv(RunDir(evaluated_run).predictions)
    assert f"{len(predictions)} images" in markdown and "pearson_r_log10_bnpp" in markdown
    # The worst errors are named by their pseudonymous IDs, largest error first.
    error = (predictions["pred_log10_bnpp"] - predictions["true_log10_bnpp"]).abs()
    assert predictions.loc[error.idxmax(), "image_id"] in markdown.split("## Worst errors")[1]
    assert (evaluated_run / "report.html").stat().st_size > 10_000


def test_html_is_self_contained_and_every_image_decodes(evaluated_run):
    from PIL import Image

    refs = page_refs(evaluated_run / report.REPORT_HTML)
    images = [value for tag, name, value in refs if tag == "img"]
    assert len(images) == 3  # ROC, scatter, calibration
    for value in images:
        assert value.startswith("data:image/png;base64,")
        with Image.open(io.BytesIO(base64.b64decode(value.split(",", 1)[1]))) as image:
            image.load()
            assert min(image.size) > 100
    outside = [value for _, _, value in refs if not value.startswith(("data:", "#"))]
    assert outside == []
    text = (evaluated_run / report.REPORT_HTML).read_text(encoding="utf-8")
    assert not re.search(r"(https?:)?//[\w.-]+\.[a-z]{2,}/", text.replace("data:", ""))  # no URL at all


def test_markdown_figures_are_files_beside_it(evaluated_run):
    markdown = (evaluated_run / report.REPORT_MD).read_text(encoding="utf-8")
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)
    assert links == ["roc.png", "scatter.png", "calibration.png"]
    assert all((evaluated_run / link).is_file() for link in links)


def test_every_claim_item_is_listed_covered_or_for_the_authors(evaluated_run):
    markdown = (evaluated_run / report.REPORT_MD).read_text(encoding="utf-8")
    checklist = markdown.split("## CLAIM 2024 checklist")[1]
    covered, authors = checklist.split("For the authors")
    for item, where in CLAIM_ITEMS.items():
        assert item in (covered if where else authors), item
    assert "Methods for explainability" in authors  # no attribution ran on this run


@pytest.mark.parametrize("layout, kind, words", [
    ({"cohort.json": "{}"}, "phantom", "synthetic phantom"),
    ({"dataset.json": '{"name": "x", "labs": "stand-in", "description": "NIH"}'}, "stand-in", "stand-ins"),
    ({"dataset.json": '{"name": "x", "labs": "measured", "description": "MIMIC"}'}, "measured", "measured BNP"),
    ({"rejects.csv": "source,row\n"}, "manifest", "a site manifest"),
    ({}, "manifest", "a site manifest"),
])
def test_the_data_source_decides_the_limitations(run_copy, records, tmp_path, layout, kind, words):
    folder = tmp_path / "dataset"
    folder.mkdir()
    for name, text in layout.items():
        (folder / name).write_text(text)
    source = report.describe_source(folder / "manifest.csv", folder / "labs.csv", ("edema",))
    assert source["kind"] == kind and "manifest.csv" in source["description"]
    own_records = shutil.copytree(records, tmp_path / "records")
    report.write_source(own_records, source)
    metrics = json.loads(RunDir(run_copy).metrics.read_text())
    RunDir(run_copy).metrics.write_text(json.dumps({**metrics, "records_dir": str(own_records)}))
    report.write_report(run_copy)
    markdown = (run_copy / report.REPORT_MD).read_text(encoding="utf-8")
    assert source["description"] in markdown
    assert words in markdown.split("## Limitations")[1].split("##")[0]


def test_report_cli_regenerates_and_records_its_command(run_copy, tmp_path, capsys):
    from bnp_cxr.cli.report import main

    (run_copy / report.REPORT_HTML).unlink()
    assert main([str(run_copy)]) == 0
    assert (run_copy / report.REPORT_HTML).is_file() and str(run_copy / report.REPORT_HTML) in capsys.readouterr().out
    state = json.loads((run_copy / report.REPORT_STATE).read_text())
    assert state["commands"]["report"] == f"python tools/report.py {run_copy}"
    assert f"`python tools/report.py {run_copy}`" in (run_copy / report.REPORT_MD).read_text(encoding="utf-8")
    empty = tmp_path / "not_a_run"
    empty.mkdir()
    assert main([str(empty)]) == 2 and "evaluate" not in capsys.readouterr().out
    assert list(empty.iterdir()) == []  # nothing written into a folder that is not an evaluated run


def _attribution_folder(out, run_dir, image_ids):
    """What tools/attribute.py leaves: per-image and aggregate in-lung tables and one panel per image."""
    from PIL import Image

    methods = ("vanilla", "gradcam")
    pd.DataFrame([{"run": run_dir.name, "size": SIZE, "method": method, "target": "bnpp",
                   "image_id": image_id} for method in methods for image_id in image_ids]).to_csv(
        out / "in_lung_per_image.csv", index=False)
    pd.DataFrame([{"method": method, "size": SIZE, "n_images": len(image_ids), "n_patients": 2,
                   "mass_in_lung_fraction": 0.61, "mass_in_lung_fraction_lo": 0.5, "mass_in_lung_fraction_hi": 0.7,
                   "top_in_lung_fraction": 0.55, "lung_area_fraction": 0.4} for method in methods]).to_csv(
        out / "in_lung.csv", index=False)
    (out / "panels").mkdir()
    for image_id in image_ids:
        Image.new("RGB", (120, 90), (200, 30, 30)).save(out / "panels" / f"{image_id}.png")


def test_attribution_adds_its_section_and_heatmaps_of_the_worst_errors(run_copy, tmp_path):
    predictions = pd.read_csv(RunDir(run_copy).predictions)
    error = (predictions["pred_log10_bnpp"] - predictions["true_log10_bnpp"]).abs()
    worst = predictions.loc[error.idxmax(), "image_id"]
    out = tmp_path / "attribution"
    out.mkdir()
    _attribution_folder(out, run_copy, [worst, predictions["image_id"].iloc[0]])
    written = add_attribution_to_reports([run_copy, tmp_path / "never_evaluated"], out,
                                         command="python tools/attribute.py --n 2")
    assert written == [run_copy / report.REPORT_HTML]
    markdown = (run_copy / report.REPORT_MD).read_text(encoding="utf-8")
    assert "## Attribution" in markdown and "0.610 [0.500, 0.700]" in markdown
    assert "panel below" in markdown.split("## Worst errors")[1].split("##")[0]
    assert "`python tools/attribute.py --n 2`" in markdown
    covered = markdown.split("## CLAIM 2024 checklist")[1].split("For the authors")[0]
    assert "Methods for explainability" in covered
    images = [value for tag, _, value in page_refs(run_copy / report.REPORT_HTML) if tag == "img"]
    assert len(images) == 4 and all(value.startswith("data:image/png;base64,") for value in images)
    # Running it again replaces the section instead of adding a second one.
    add_attribution_to_reports([run_copy], out)
    assert (run_copy / report.REPORT_MD).read_text(encoding="utf-8").count("## Attribution") == 1


def _scorecard_files(out):
    """What tools/attribute.py --scorecard leaves: scorecard.csv (a not-applicable row too) and its agreement."""
    rows = [{"method": method, "size": SIZE, "pointing_game": value, "pointing_game_lo": value - 0.1,
             "pointing_game_hi": value + 0.1, "pointing_game_n": 4} for method, value in (("vanilla", 0.75),
                                                                                       ("xrai", 0.5))]
    rows.append({"method": "gradcam", "size": SIZE, "reason": "no spatial layer"})
    rows.append({"method": "vanilla", "size": 2 * SIZE, "pointing_game": 0.11, "pointing_game_lo": 0.0,
                 "pointing_game_hi": 0.2, "pointing_game_n": 4})  # another size: not this run's section
    pd.DataFrame(rows).to_csv(out / SCORECARD_CSV, index=False)
    pd.DataFrame([{"size": SIZE, "metric": "pointing_game", "spearman": 0.9, "n_methods": 3}]).to_csv(
        out / SCORECARD_AGREEMENT, index=False)


def test_later_outputs_appear_when_the_report_is_regenerated(run_copy, tmp_path):
    from bnp_cxr.cli.report import main

    out = tmp_path / "attribution"
    out.mkdir()
    _attribution_folder(out, run_copy, ["i1"])
    add_attribution_to_reports([run_copy], out)
    assert "## Attribution scorecard" not in (run_copy / report.REPORT_MD).read_text(encoding="utf-8")
    _scorecard_files(out)  # written after attribute.py ran: the attribution section's files are read again
    assert main([str(run_copy)]) == 0
    markdown = (run_copy / report.REPORT_MD).read_text(encoding="utf-8")
    assert "0.61" in markdown  # the in-lung table, rebuilt
    add_attribution_to_reports([run_copy], out)  # a scorecard in the attribution folder gets its own section
    markdown = (run_copy / report.REPORT_MD).read_text(encoding="utf-8")
    section = markdown.split("## Attribution scorecard")[1].split("\n## ")[0]
    assert "0.75 [0.65, 0.85]" in section and "0.50 [0.40, 0.60]" in section and "0.11" not in section
    assert "gradcam: not applicable (no spatial layer)" in section and "0.900" in section


def test_sanity_section_follows_its_folder(run_copy, tmp_path):
    from bnp_cxr.cli.report import main

    sanity = tmp_path / "sanity" / run_copy.name
    sanity.mkdir(parents=True)
    pd.DataFrame([{"method": "vanilla", "step": "head", "spearman": 0.123}]).to_csv(sanity / "sanity.csv", index=False)
    written = add_sanity_to_report(run_copy, sanity, "python tools/sanity_check.py --n 2")
    markdown = (run_copy / report.REPORT_MD).read_text(encoding="utf-8")
    assert written == run_copy / report.REPORT_HTML and "## Model-randomisation sanity check" in markdown
    assert "0.123" in markdown and "`python tools/sanity_check.py --n 2`" in markdown
    assert add_sanity_to_report(tmp_path / "never_evaluated", sanity) is None
    shutil.rmtree(sanity)  # moved away: the regenerated report says so instead of showing stale numbers
    assert main([str(run_copy)]) == 0
    markdown = (run_copy / report.REPORT_MD).read_text(encoding="utf-8")
    assert "0.123" not in markdown and "rerun it to restore this section" in markdown


def test_resolution_study_section_lists_every_size(run_copy, tmp_path):
    study = tmp_path / "study"
    study.mkdir()
    pd.DataFrame([{"size": size, "n_images": 12, "n_patients": 10, "auc_combined": auc,
                   "auc_combined_ci_low": auc - 0.1, "auc_combined_ci_high": auc + 0.05}
                  for size, auc in ((128, 0.7), (64, 0.65))]).to_csv(study / "resolution.csv", index=False)
    written = add_study_to_reports([run_copy, tmp_path / "never_evaluated"], study, "python tools/resolution_study.py")
    assert written == [run_copy / report.REPORT_HTML]
    markdown = (run_copy / report.REPORT_MD).read_text(encoding="utf-8")
    section = markdown.split("## Resolution study")[1].split("\n## ")[0]
    assert section.index("64 px") < section.index("128 px") and "0.650 [0.550, 0.700]" in section
    covered = markdown.split("## CLAIM 2024 checklist")[1].split("For the authors")[0]
    assert "Robustness or sensitivity analysis" in covered and "resolution study section" in covered


def test_report_knows_the_scorecard_file_names():
    from bnp_cxr.attribution import scorecard_run

    assert (SCORECARD_CSV, SCORECARD_AGREEMENT, SCORECARD_PLOT) == (
        scorecard_run.TABLE, scorecard_run.AGREEMENT, scorecard_run.FIGURE)


def test_unknown_section_kind_is_a_clear_error(run_copy):
    state = report.read_state(run_copy)
    state.setdefault("sections", {})["mystery"] = {"source": {"kind": "mystery"}}
    (run_copy / report.REPORT_STATE).write_text(json.dumps(state), encoding="utf-8")
    with pytest.raises(ValueError, match="unknown report section kind 'mystery'"):
        report.write_report(run_copy)


@pytest.mark.parametrize("n, bins", [(100, 10), (7, 7), (0, 0)])
def test_calibration_bins_follow_prediction_deciles(n, bins):
    rng = np.random.default_rng(0)
    pred = rng.normal(2.5, 0.6, n)
    true = pred + rng.normal(0, 0.1, n)
    rows = calibration_bins(np.r_[true, np.nan], np.r_[pred, 1.0])  # a row without a lab is left out
    assert len(rows) == bins and sum(row["n"] for row in rows) == n
    means = [row["predicted"] for row in rows]
    assert means == sorted(means)
    for row in rows:
        assert abs(row["observed"] - row["predicted"]) < 0.35  # lab noise sd 0.1
        assert row["n"] == 1 or row["ci_low"] < row["observed"] < row["ci_high"]


@pytest.mark.parametrize("train_on_val, says_in_sample", [(True, True), (False, False), (None, False)])
def test_the_validation_loss_is_called_in_sample_when_the_val_images_were_fitted_on(train_on_val, says_in_sample):
    from types import SimpleNamespace

    from bnp_cxr.evaluation.report_sections import model_section

    config = {"backbone": "small_cnn", "size": 64, "keep": "last",
              **({} if train_on_val is None else {"train_on_val": train_on_val})}  # None: saved before the option
    blocks = model_section(SimpleNamespace(config=config, history=[{"val_loss": 0.5}, {"val_loss": 0.4}]))
    text = " ".join(str(block[-1]) for block in blocks if block[0] == "p")
    assert "best validation loss 0.4" in text and "at epoch 2" in text
    assert ("in-sample: the val images were fitted on too" in text) is says_in_sample
