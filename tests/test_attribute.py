"""tools/attribute.py and tools/predict.py end to end on a small phantom cohort with tiny models."""

import importlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from archives import write_run

from bnp_cxr.workspace import RunDir

REPO = Path(__file__).resolve().parents[1]
SIZES = (64, 96)
N_IMAGES = 3


def load_tool(name: str):
    return importlib.import_module(f"bnp_cxr.cli.{name}")


@pytest.fixture(scope="module")
def cohort(small_cohort, tmp_path_factory):
    """Records of the small phantom cohort at SIZES (root/records) and an untrained small CNN run per size."""
    import keras

    from bnp_cxr.data.manifest import load_manifest
    from bnp_cxr.models import build_model
    from bnp_cxr.records.writer import IngestConfig, write_records

    root = tmp_path_factory.mktemp("attribution")
    manifest = load_manifest(small_cohort / "manifest.csv", small_cohort / "labs.csv")
    write_records(manifest, root / "records", IngestConfig(sizes=SIZES, shard_size=8, progress=False))
    for size in SIZES:
        keras.utils.set_random_seed(size)
        write_run(RunDir.for_size(size, root / "runs").path, build_model("small_cnn", size), size, root / "records")
    return root


def attribute(cohort: Path, out: Path, *extra: str) -> int:
    return load_tool("attribute").main(["--runs", str(cohort / "runs"), "--out", str(out), "--n", str(N_IMAGES),
                                        "--split", "train", "--n-boot", "1000", "--no-progress", *extra])


def test_attribute_explains_an_ensemble_run(cohort, tmp_path):
    """The CPU recipe's model (training.ensemble): every method runs on it, Grad-CAM on all members' features."""
    import keras

    from bnp_cxr.models import build_model, ensemble_model

    members = []
    for seed in (1, 2):
        keras.utils.set_random_seed(seed)
        members.append(build_model("small_cnn", SIZES[0]))
    run = write_run(tmp_path / "runs" / "ensemble", ensemble_model(members), SIZES[0], cohort / "records",
                    backbone="small_cnn", members=2)
    out = tmp_path / "attribution"
    assert load_tool("attribute").main(["--run", str(run), "--out", str(out), "--n", "2", "--split", "train",
                                        "--n-boot", "1000", "--no-progress", "--no-panels"]) == 0
    per_image = pd.read_csv(out / "in_lung_per_image.csv")
    assert len(per_image) == 2 * 3 and per_image["mass_in_lung_fraction"].between(0, 1).all()


def test_attribute_writes_maps_tables_and_panels(cohort, tmp_path, capsys):
    out = tmp_path / "attribution"
    assert attribute(cohort, out) == 0
    printed = capsys.readouterr().out
    assert "in-lung attention" in printed
    maps = sorted(out.glob("maps/*/*.npz"))
    assert len(maps) == N_IMAGES * len(SIZES) * 3
    per_image = pd.read_csv(out / "in_lung_per_image.csv")
    assert len(per_image) == len(maps) and set(per_image["lung_mask_source"]) == {"record"}
    for path in maps:
        with np.load(path) as saved:
            attribution, lung, (top, left, bottom, right) = saved["attribution"], saved["lung_mask"], saved["content_box"]
            size = int(saved["size"])
            assert attribution.shape == lung.shape == (size, size) and np.isfinite(attribution).all()
            row = per_image[(per_image["image_id"] == str(saved["image_id"])) & (per_image["size"] == size)
                            & (per_image["method"] == str(saved["method"]))].iloc[0]
            # The chance level is the lung's share of the content box, recomputed here from the saved mask.
            assert row["lung_area_fraction"] == pytest.approx(lung.sum() / ((bottom - top) * (right - left)), rel=1e-5)
            positive = np.clip(attribution, 0, None)
            expected = positive[lung].sum() / positive[top:bottom, left:right].sum()
            assert row["mass_in_lung_fraction"] == pytest.approx(expected, rel=1e-4)
    # Phantom records carry the truth components: their attribution shares are reported.
    assert any(column.startswith("component_") or "kerley" in column for column in per_image.columns)
    aggregate = pd.read_csv(out / "in_lung.csv")
    assert len(aggregate) == len(SIZES) * 3 and set(aggregate["size"]) == set(SIZES)
    for column in ("mass_in_lung_fraction", "top_in_lung_fraction", "lung_area_fraction"):
        assert aggregate[column].between(0, 1).all()
        assert (aggregate[f"{column}_lo"] <= aggregate[column] + 1e-9).all()
    assert (out / "in_lung_trend.png").stat().st_size > 10_000
    panels = sorted(out.glob("panels/*"))
    assert {p.suffix for p in panels} == {".png", ".pdf"} and len(panels) == 2 * N_IMAGES
    # Pseudonymous names only: every file is named by an image ID from the records.
    assert {p.stem for p in panels} == set(per_image["image_id"])


def test_sharded_attribution_merges_to_the_single_run_tables(cohort, tmp_path):
    single, sharded = tmp_path / "single", tmp_path / "sharded"
    options = ("--methods", "vanilla", "gradcam", "--no-panels")
    assert attribute(cohort, single, *options) == 0
    for index in range(2):
        assert attribute(cohort, sharded, *options, "--shard", f"{index}/2") == 0
    assert not (sharded / "in_lung.csv").exists()
    assert attribute(cohort, sharded, "--merge") == 0
    for name in ("in_lung_per_image.csv", "in_lung.csv"):
        # Same rows, order and columns; floats agree to float32 round-off (a shard batches fewer images).
        pd.testing.assert_frame_equal(pd.read_csv(sharded / name), pd.read_csv(single / name), rtol=1e-5)


def test_merge_refuses_missing_shards(cohort, tmp_path, capsys):
    out = tmp_path / "partial"
    assert attribute(cohort, out, "--methods", "gradcam", "--no-panels", "--shard", "1/3") == 0
    assert attribute(cohort, out, "--merge") == 2
    assert "shards [0, 2] of 3 have not finished" in capsys.readouterr().err


@pytest.mark.parametrize("arguments, message", [
    (["--runs", "{tmp}/nothing"], "is not a folder of training runs"),
    (["--runs", "{tmp}"], "no trained runs"),
    (["--run", "{cohort}/runs/size64", "{cohort}/runs/size64"], "both at 64 px"),
    (["--runs", "{cohort}/runs", "--n", "0"], "n >= 1"),
])
def test_attribute_errors(cohort, tmp_path, capsys, arguments, message):
    argv = [a.format(tmp=tmp_path, cohort=cohort) for a in arguments]
    assert load_tool("attribute").main([*argv, "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    assert message in capsys.readouterr().err


def test_attribute_rejects_bad_shard_syntax(capsys):
    with pytest.raises(SystemExit):
        load_tool("attribute").main(["--shard", "3/2"])
    assert "0 <= I < N" in capsys.readouterr().err


def test_predict_matches_the_records_and_rejects_bad_files(cohort, small_cohort, tmp_path, capsys):
    """A prediction from the image file equals the model's output on that image's record."""
    from bnp_cxr.attribution.sample import load_sample, record_image_ids
    from bnp_cxr.evaluation.evaluate import load_run_model
    from bnp_cxr.data.manifest import load_manifest
    from bnp_cxr.predict import model_input

    manifest = load_manifest(small_cohort / "manifest.csv", small_cohort / "labs.csv")
    ids = set(record_image_ids(cohort / "records", "train", 64))
    row = next(r for r in manifest.rows if r.image_id in ids)
    record = load_sample(cohort / "records", "train", 64, [row.image_id])[0]
    image, box = model_input(row.abs_path, 64)
    np.testing.assert_array_equal(image, record.image)
    assert box == record.content_box

    broken = tmp_path / "broken.dcm"
    broken.write_bytes(b"DICM but not really")
    out = tmp_path / "predictions"
    rc = load_tool("predict").main([row.abs_path, str(broken), "--run", str(cohort / "runs" / "size64"),
                                    "--out", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    model = load_run_model(cohort / "runs" / "size64" / "model.keras")
    bnp, bnpp = 10 ** np.asarray(model(image[None]))[0]
    assert f"{bnpp:.0f}" in printed and f"{bnp:.0f}" in printed
    assert "rejected:" in printed and "broken.dcm" in printed
    overlays = list(out.glob("*.png"))
    assert len(overlays) == 1 and overlays[0].name.startswith("i") and "im0" not in overlays[0].name
