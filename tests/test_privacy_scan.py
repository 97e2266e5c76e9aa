"""Patient privacy (issue #6.3): names and IDs in DICOM headers and the manifest never reach any output.

The whole pipeline (make_tfrecords, train, evaluate, and attribute / predict where present) runs on
DICOMs whose headers name their patients; every output file (bytes, archives, PNG / PDF text, TensorBoard
events, captured logs) and every file name is scanned for each identifier in many encodings.
"""

import gzip
import json
import logging
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from phi import phi_patterns, python_codec, scan_tree, write_named_archive

ROOT = Path(__file__).resolve().parents[1]
SALT = "privacy-test-site-secret-6f1c"
SIZE = 64


def run_tool(name: str, *args: str, logs: Path, cwd: Path) -> subprocess.CompletedProcess:
    """Run tools/{name}.py with the site salt set; its stdout and stderr become files under logs/."""
    env = {**os.environ, "BNP_CXR_SALT": SALT, "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("BNP_CXR_SALT_FILE", None)
    result = subprocess.run([sys.executable, str(ROOT / "tools" / f"{name}.py"), *args], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=600)
    (logs / f"{name}.stdout.log").write_text(result.stdout, encoding="utf-8")
    (logs / f"{name}.stderr.log").write_text(result.stderr, encoding="utf-8")
    assert result.returncode == 0, f"{name}: {result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    return write_named_archive(tmp_path_factory.mktemp("archive"))


@pytest.fixture(scope="module")
def outputs(archive, tmp_path_factory):
    """Everything the pipeline writes for the named archive, plus its captured logs, under one folder."""
    out = tmp_path_factory.mktemp("outputs")
    logs, records, run_dir = out / "logs", out / "records", out / "runs" / f"size{SIZE}"
    logs.mkdir()
    run_tool("make_tfrecords", "--manifest", str(archive.manifest), "--labs", str(archive.labs), "--out",
             str(records), "--sizes", str(SIZE), "--shard-size", "8", "--workers", "0", "--no-progress",
             logs=logs, cwd=out)
    run_tool("train", "--records", str(records), "--size", str(SIZE), "--backbone", "small_cnn", "--members", "1",
             "--epochs", "1",
             "--batch-size", "4", "--run-dir", str(run_dir), "--n-boot", "1000", "--verbose", "2", logs=logs, cwd=out)
    run_tool("evaluate", "--run-dir", str(run_dir), "--records", str(records), "--size", str(SIZE), "--split", "val",
             "--n-boot", "1000", logs=logs, cwd=out)
    run_tool("attribute", "--run", str(run_dir), "--records", str(records), "--out", str(out / "attribution"),
             "--n", "4", "--n-boot", "1000", "--methods", "vanilla", "gradcam", "--no-progress", logs=logs, cwd=out)
    # predict reads the DICOMs themselves, headers and all.
    run_tool("predict", *map(str, archive.dicoms[:2]), "--run", str(run_dir), "--out", str(out / "predictions"),
             logs=logs, cwd=out)
    return out


def test_archive_headers_and_tables_carry_every_identifier(archive):
    import pydicom

    for path, person in zip(archive.dicoms, (p for p in archive.people for _ in p.accessions)):
        ds = pydicom.dcmread(path)
        assert str(ds.PatientName) == person.name and ds.PatientID == person.mrn
        assert ds.OtherPatientIDs == person.other_id and ds.AccessionNumber in person.accessions
        raw = path.read_bytes()  # the name is stored in its own character set, the set we scan for
        assert person.name.encode(python_codec(person.character_set)) in raw
    # Positive control of the scanner on the inputs: each identifier of each person is found there.
    findings = "\n".join(scan_tree(archive.root, phi_patterns(archive.people)))
    for person in archive.people:
        assert f"name {person.name!r}" in findings
        assert all(f"identifier {identifier!r}" in findings for identifier in person.identifiers)
    assert not [path for path in archive.root.rglob("*") if any(p.mrn in path.name for p in archive.people)]


def _planted_png(path: Path, text: str) -> None:
    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", text, zip=True)  # compressed iTXt / zTXt: invisible to a plain byte search
    Image.new("L", (4, 4)).save(path, format="PNG", pnginfo=info)


def _planted_pdf(path: Path, text: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure = plt.figure()
    figure.text(0.1, 0.5, text)  # drawn text: kerned glyph by glyph inside a compressed content stream
    figure.savefig(path, format="pdf")
    plt.close(figure)


def _planted_zip(path: Path, text: str) -> None:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("config.json", json.dumps({"note": text}))


def _planted_html_figure(path: Path, text: str) -> None:
    """A report page embedding a PNG whose text chunk holds the name, as report.html embeds its figures."""
    import base64

    _planted_png(path.with_suffix(".png"), text)
    uri = base64.b64encode(path.with_suffix(".png").read_bytes()).decode("ascii")
    path.with_suffix(".png").unlink()
    path.write_text(f'<html><body><img src="data:image/png;base64,{uri}"></body></html>', encoding="utf-8")


PLANTERS = {
    "utf-8 text": lambda path, text: path.write_text(f"patient {text}\n", encoding="utf-8"),
    "utf-16 text": lambda path, text: path.write_text(text, encoding="utf-16"),
    "json ensure_ascii": lambda path, text: path.write_text(json.dumps({"name": text})),
    "gzip": lambda path, text: path.write_bytes(gzip.compress(text.encode("utf-8"))),
    "zip member": _planted_zip,
    "png text chunk": _planted_png,
    "pdf drawn text": _planted_pdf,
    "html embedded figure": _planted_html_figure,
    "file name": lambda path, text: path.with_name(f"{text.replace('^', '_')}.txt").write_bytes(b""),
    "caret as space": lambda path, text: path.write_text(text.replace("^", " "), encoding="utf-8"),
}


@pytest.mark.parametrize("how", sorted(PLANTERS))
@pytest.mark.parametrize("which", [0, 1, 4, 7])  # ASCII, Latin-1, Cyrillic and Japanese names
def test_scanner_finds_a_planted_name(archive, tmp_path, how, which):
    person = archive.people[which]
    PLANTERS[how](tmp_path / "planted.bin", person.name)
    assert any(person.mrn in finding for finding in scan_tree(tmp_path, phi_patterns(archive.people)))


def test_scanner_finds_planted_mrn_in_utf16(archive, tmp_path):
    (tmp_path / "events").write_bytes(archive.people[3].mrn.encode("utf-16-le"))
    assert scan_tree(tmp_path, phi_patterns(archive.people)) == [f"events: identifier {archive.people[3].mrn!r}"]


@pytest.mark.slow
def test_no_identifier_in_any_output(archive, outputs):
    files = [path for path in outputs.rglob("*") if path.is_file()]
    kinds = {path.suffix for path in files} | {"tfevents" for path in files if "tfevents" in path.name}
    # Not vacuous: records, tables, JSON, model, figures, maps, TensorBoard events and logs were all written.
    assert {".tfrecord", ".csv", ".json", ".keras", ".png", ".pdf", ".npz", ".log", "tfevents", ".md",
            ".html"} <= kinds, kinds  # the run reports (report.md, report.html with embedded figures) too
    rejects = (outputs / "records" / "rejects.csv").read_text(encoding="utf-8").splitlines()
    assert len(rejects) > 1 and archive.missing_image in "\n".join(rejects)
    assert scan_tree(outputs, phi_patterns(archive.people)) == []


@pytest.mark.slow
def test_records_carry_the_salted_pseudonym_of_each_written_patient(archive, outputs):
    import tensorflow as tf

    from bnp_cxr.data.privacy import DEMO_SALT, pseudonymize
    from bnp_cxr.records.schema import parse_example

    seen = {parse_example(raw)["patient_id"].numpy().decode()
            for shard in (outputs / "records").glob("*.tfrecord") for raw in tf.data.TFRecordDataset(str(shard))}
    written = [person for person in archive.people if person.split != "conflict"]
    assert seen == {pseudonymize(person.mrn, SALT) for person in written}
    assert not seen & {pseudonymize(person.mrn, DEMO_SALT) for person in written}
    assert "demo salt" not in (outputs / "logs" / "make_tfrecords.stderr.log").read_text()


# ---------------------------------------------------------------- where the salt comes from

@pytest.fixture
def no_salt_env(monkeypatch):
    from bnp_cxr.data.privacy import SALT_ENV, SALT_FILE_ENV

    monkeypatch.delenv(SALT_ENV, raising=False)
    monkeypatch.delenv(SALT_FILE_ENV, raising=False)
    return monkeypatch


@pytest.mark.parametrize("source", ["env", "file", "explicit"])
def test_salt_comes_from_the_user(no_salt_env, tmp_path, caplog, source):
    from bnp_cxr.data.privacy import SALT_ENV, SALT_FILE_ENV, resolve_salt

    secret = f"site-secret-from-{source}"
    if source == "env":
        no_salt_env.setenv(SALT_ENV, secret)
    elif source == "file":
        (tmp_path / "salt").write_text(secret + "\n", encoding="utf-8")
        no_salt_env.setenv(SALT_FILE_ENV, str(tmp_path / "salt"))
    with caplog.at_level(logging.WARNING, logger="bnp_cxr.data.privacy"):
        assert resolve_salt(secret if source == "explicit" else None) == secret
    assert not caplog.records


def test_demo_salt_warns(no_salt_env, caplog):
    from bnp_cxr.data.privacy import DEMO_SALT, resolve_salt

    with caplog.at_level(logging.WARNING, logger="bnp_cxr.data.privacy"):
        assert resolve_salt() == DEMO_SALT
    assert any("demo salt" in record.getMessage() for record in caplog.records)


def test_empty_salt_file_is_refused(no_salt_env, tmp_path):
    from bnp_cxr.data.privacy import SALT_FILE_ENV, resolve_salt

    (tmp_path / "salt").write_text("\n")
    no_salt_env.setenv(SALT_FILE_ENV, str(tmp_path / "salt"))
    with pytest.raises(ValueError, match="empty"):
        resolve_salt()


def _pseudonyms(archive) -> list[tuple[str, str]]:
    from bnp_cxr.data.manifest import load_manifest

    return [(row.patient_key, row.image_id) for row in load_manifest(archive.manifest, archive.labs).rows]


@pytest.mark.parametrize("first, second, same", [("salt-A", "salt-A", True), ("salt-A", "salt-B", False)])
def test_pseudonymous_ids_follow_the_salt(archive, no_salt_env, first, second, same):
    from bnp_cxr.data.privacy import SALT_ENV

    no_salt_env.setenv(SALT_ENV, first)
    ids_first = _pseudonyms(archive)
    no_salt_env.setenv(SALT_ENV, second)
    ids_second = _pseudonyms(archive)
    assert ids_first and len(ids_first) == len(ids_second)
    if same:
        assert ids_first == ids_second
    else:  # every patient and image ID changes with the salt
        assert all(a[0] != b[0] and a[1] != b[1] for a, b in zip(ids_first, ids_second))
    mrns = {person.mrn for person in archive.people}
    assert not {key for pair in ids_first for key in pair} & mrns


# ---------------------------------------------------------------- a user manifest needs the site salt

@pytest.mark.parametrize("phantom, salt, expected", [
    (True, None, None),  # the built-in phantom: the demo salt (unless one is set)
    (False, "site-secret", "site-secret"),
    (False, None, "refused"),
])
def test_only_the_phantom_may_go_without_a_site_salt(no_salt_env, tmp_path, phantom, salt, expected):
    from bnp_cxr.cli.make_tfrecords import manifest_salt
    from bnp_cxr.phantom.cohort import COHORT_SUMMARY
    from bnp_cxr.data.privacy import SALT_ENV, MissingSaltError

    if phantom:
        (tmp_path / COHORT_SUMMARY).write_text("{}")
    if salt:
        no_salt_env.setenv(SALT_ENV, salt)
    if expected == "refused":
        with pytest.raises(MissingSaltError, match=f"{SALT_ENV}.*BNP_CXR_SALT_FILE.*phantom only"):
            manifest_salt(tmp_path / "manifest.csv")
    else:
        assert manifest_salt(tmp_path / "manifest.csv") == expected


def test_make_tfrecords_refuses_a_user_manifest_without_a_site_salt(no_salt_env, archive, tmp_path, capsys):
    from bnp_cxr.cli import make_tfrecords

    code = make_tfrecords.main(["--manifest", str(archive.manifest), "--labs", str(archive.labs), "--out",
                                str(tmp_path / "records"), "--sizes", "64", "--workers", "0", "--no-progress"])
    assert code == 2 and "no site salt: set BNP_CXR_SALT" in capsys.readouterr().err
    assert not (tmp_path / "records").exists()


@pytest.mark.parametrize("source", ["env", "file", "explicit"])
def test_site_salt_takes_the_users_salt(no_salt_env, tmp_path, source):
    from bnp_cxr.data.privacy import SALT_ENV, SALT_FILE_ENV, site_salt

    secret = f"secret-{source}"
    if source == "env":
        no_salt_env.setenv(SALT_ENV, secret)
    elif source == "file":
        (tmp_path / "salt").write_text(secret)
        no_salt_env.setenv(SALT_FILE_ENV, str(tmp_path / "salt"))
    assert site_salt(secret if source == "explicit" else None) == secret


# ---------------------------------------------------------------- dataset identifiers (MIMIC IDs and dates)

@pytest.mark.parametrize("text, found", [
    ("subject 10000032 in a log", True),
    ("path files/p10/p10000032/s50414267/x.jpg", True),
    ('{"id": "10000032"}', True),
    ("0.1000003271 is a float", False),  # a numeric ID inside a longer number is not a leak
    ("210000032", False),
    ("study on 2180-05-06", True),
    ("dicom 02aa804e-bde0afdd-112c0b34-7bc16630-4e384014", True),
])
def test_scanner_finds_dataset_identifiers_not_digits_inside_numbers(tmp_path, text, found):
    from phi import identifier_patterns

    (tmp_path / "file.txt").write_text(text, encoding="utf-8")
    patterns = identifier_patterns(["10000032", "50414267", "2180-05-06",
                                    "02aa804e-bde0afdd-112c0b34-7bc16630-4e384014"])
    assert bool(scan_tree(tmp_path, patterns, digit_bounded=True)) == found
