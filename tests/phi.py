"""Patient-identifying test inputs and a scanner for them: DICOMs whose headers name real-looking patients.

`write_named_archive` writes 64 x 64 MONOCHROME2 DICOMs (file names are SOP Instance UIDs) whose headers
carry PatientName in several character sets, PatientID / OtherPatientIDs (MRN-like) and AccessionNumber,
a manifest whose patient_id column holds the MRNs, and a labs table keyed by MRN. `scan_tree` looks for
every identifier, in many encodings, in every file's bytes (and inside gzip, zip, PNG text chunks, PDF
streams, the text pypdf extracts from PDF pages and base64 data URIs of HTML reports) and in every file and
folder name.
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import re
import unicodedata
import zipfile
import zlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Iterator

import numpy as np

# (PatientName in DICOM PN form, Specific Character Set): ASCII, Latin-1, Cyrillic, Greek and UTF-8 names.
NAMES = (
    ("Quixley^Bartholomew", ""),
    ("Müller^Jürgen", "ISO_IR 100"),
    ("Østergård^Åse", "ISO_IR 100"),
    ("Hernández García^María José", "ISO_IR 100"),
    ("Иванов^Иван", "ISO_IR 144"),
    ("Смирнова^Екатерина", "ISO_IR 144"),
    ("Παπαδόπουλος^Ελένη", "ISO_IR 126"),
    ("山田^太郎", "ISO_IR 192"),
    ("Wójcik^Łukasz", "ISO_IR 192"),
    ("Nguyễn^Thị Minh", "ISO_IR 192"),
    ("Kowalczyk^Zbigniew", ""),
    ("Şahin^Çağla", "ISO_IR 192"),
    ("O'Rourke^Siobhán", "ISO_IR 100"),  # rows with conflicting splits: rejected, must not leak either
)
SPLIT_OF = ["train"] * 8 + ["val", "val", "test", "test", "conflict"]
IMAGES_PER_PATIENT = 2
SIZE_PX = 64
# Python codecs tried for every name, besides its own DICOM character set.
ENCODINGS = ("utf-8", "utf-16-le", "utf-16-be", "latin-1", "iso-8859-5", "iso-8859-7", "cp1252")
MIN_PATTERN_BYTES = 5  # shorter byte strings turn up by chance in megabytes of pixels and weights
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class Person:
    """One synthetic patient: DICOM name, its character set and every identifier that must not leak."""

    name: str
    character_set: str
    mrn: str
    other_id: str
    accessions: tuple[str, ...]
    split: str

    @property
    def identifiers(self) -> tuple[str, ...]:
        return (self.mrn, self.other_id, *self.accessions)


@dataclass(frozen=True)
class NamedArchive:
    """What write_named_archive wrote."""

    root: Path
    manifest: Path
    labs: Path
    people: tuple[Person, ...]
    dicoms: tuple[Path, ...]
    missing_image: str  # a manifest row's image that does not exist (rejected as file_not_found)


def python_codec(character_set: str) -> str:
    """The Python codec of a DICOM Specific Character Set value ('' = default repertoire)."""
    from pydicom.charset import python_encoding

    return python_encoding.get(character_set, "ascii") if character_set else "ascii"


def _pixels(rng: np.random.Generator, severity: float) -> np.ndarray:
    """A radiograph-like 64 x 64 image: noise plus a bright disc that grows with severity."""
    yy, xx = np.mgrid[:SIZE_PX, :SIZE_PX]
    image = rng.normal(1500, 120, (SIZE_PX, SIZE_PX))
    image[(yy - 38) ** 2 + (xx - 34) ** 2 < (6 + 14 * severity) ** 2] += 1800
    return np.clip(image, 0, 4095).astype(np.uint16)


def _dataset(person: Person, accession: str, when: datetime, pixels: np.ndarray, uid: str, seed: int):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image, for presentation
    meta.MediaStorageSOPInstanceUID = uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    if person.character_set:
        ds.SpecificCharacterSet = person.character_set
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, uid
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[str(seed), "study", accession])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[str(seed), "series", accession])
    ds.PatientName, ds.PatientID, ds.OtherPatientIDs = person.name, person.mrn, person.other_id
    ds.PatientBirthDate, ds.PatientSex, ds.AccessionNumber = "19570304", "O", accession
    ds.StudyDate, ds.StudyTime = when.strftime("%Y%m%d"), when.strftime("%H%M%S")
    ds.Modality, ds.ViewPosition, ds.BodyPartExamined = "DX", "PA", "CHEST"
    ds.InstitutionName = "Test Site"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelSpacing = ["0.5", "0.5"]
    ds.PixelData = pixels.tobytes()
    return ds


def write_named_archive(root: Path, seed: int = 0) -> NamedArchive:
    """DICOMs named by UID + manifest (patient_id = MRN, explicit splits) + labs keyed by MRN, with bad rows."""
    from pydicom.uid import generate_uid

    rng = np.random.default_rng(seed)
    (root / "dicom").mkdir(parents=True, exist_ok=True)
    people, dicoms = [], []
    manifest = ["patient_id,image_path,study_datetime,view,split"]
    labs = ["patient_id,lab_datetime,test,value"]
    start = datetime(2021, 5, 3, 8, 30)
    for index, ((name, charset), split) in enumerate(zip(NAMES, SPLIT_OF)):
        person = Person(name, charset, mrn=f"MRN{40_417_000 + 7_919 * index:09d}",
                        other_id=f"ALT{9_310_553 + index:08d}X",
                        accessions=tuple(f"ACN{seed:02d}{index:03d}{visit}77Q" for visit in range(IMAGES_PER_PATIENT)),
                        split=split)
        people.append(person)
        for visit, accession in enumerate(person.accessions):
            severity = float(rng.random())
            when = start + timedelta(days=11 * index + 40 * visit, hours=int(rng.integers(0, 9)))
            uid = generate_uid(entropy_srcs=[str(seed), "image", accession])
            path = root / "dicom" / f"{uid}.dcm"
            pixels = _pixels(rng, severity)
            _dataset(person, accession, when, pixels, uid, seed).save_as(path, enforce_file_format=True)
            dicoms.append(path)
            row_split = ("train", "val")[visit] if split == "conflict" else split
            manifest.append(f"{person.mrn},dicom/{path.name},{when.isoformat()},PA,{row_split}")
            lab_time = (when + timedelta(hours=2)).isoformat()
            labs.append(f"{person.mrn},{lab_time},BNPP,{10 ** (1.8 + 2 * severity):.1f}")
            if visit == 0:
                labs.append(f"{person.mrn},{lab_time},BNP,{10 ** (1.3 + 1.6 * severity):.1f}")
    # Bad rows, so that rejects.csv has content: an image that does not exist and a lab that is no number.
    missing = f"dicom/{generate_uid(entropy_srcs=[str(seed), 'missing'])}.dcm"
    manifest.append(f"{people[0].mrn},{missing},{start.isoformat()},PA,train")
    labs.append(f"{people[1].mrn},{start.isoformat()},BNPP,see comment")
    (root / "manifest.csv").write_text("\n".join(manifest) + "\n", encoding="utf-8")
    (root / "labs.csv").write_text("\n".join(labs) + "\n", encoding="utf-8")
    return NamedArchive(root, root / "manifest.csv", root / "labs.csv", tuple(people), tuple(dicoms), missing)


def _name_variants(name: str) -> set[str]:
    """How a PN value may be rendered: caret or space separated, given name first, each part, upper case."""
    family, _, given = name.partition("^")
    texts = {name, name.replace("^", " "), f"{given} {family}", f"{family}, {given}", family, given}
    return {variant for text in texts if text for variant in (text, text.upper())}


def _encodings(text: str, character_set: str = "") -> set[bytes]:
    """The byte forms of a text: common codecs, the DICOM character set, NFD UTF-8 and JSON \\u escapes."""
    forms = set()
    for codec in {*ENCODINGS, python_codec(character_set)}:
        try:
            forms.add(text.encode(codec))
        except UnicodeEncodeError:
            continue
    forms.add(unicodedata.normalize("NFD", text).encode("utf-8"))
    forms.add(json.dumps(text)[1:-1].encode("ascii"))  # JSON with ensure_ascii
    return forms


def phi_patterns(people: tuple[Person, ...]) -> dict[bytes, str]:
    """Every byte pattern (>= MIN_PATTERN_BYTES) that would reveal a person, mapped to a description."""
    patterns: dict[bytes, str] = {}
    for person in people:
        for variant in _name_variants(person.name):
            for form in _encodings(variant, person.character_set):
                patterns.setdefault(form, f"name {variant!r} of {person.mrn}")
        for identifier in person.identifiers:
            for form in _encodings(identifier):
                patterns.setdefault(form, f"identifier {identifier!r}")
    return {form: what for form, what in patterns.items() if len(form) >= MIN_PATTERN_BYTES}


def _png_texts(data: bytes) -> Iterator[bytes]:
    """Texts of a PNG's tEXt, zTXt and iTXt chunks (decompressed)."""
    offset = len(PNG_MAGIC)
    while offset + 8 <= len(data):
        length = int.from_bytes(data[offset:offset + 4], "big")
        kind, body = data[offset + 4:offset + 8], data[offset + 8:offset + 8 + length]
        offset += 12 + length
        if kind == b"zTXt":
            keyword, _, rest = body.partition(b"\0")
            yield keyword + b"\0" + zlib.decompress(rest[1:])
        elif kind == b"iTXt":
            keyword, _, rest = body.partition(b"\0")
            compressed, text = rest[0], rest[2:].split(b"\0", 2)[-1]
            yield keyword + b"\0" + (zlib.decompress(text) if compressed else text)


_DATA_URI = re.compile(rb"data:[\w/+.-]+;base64,([A-Za-z0-9+/=]+)")
_PDF_STREAM = re.compile(rb"stream\r?\n(.*?)\r?\nendstream", re.S)
_PDF_STRING = re.compile(rb"\(((?:[^()\\]|\\.)*)\)", re.S)
_PDF_ESCAPE = re.compile(rb"\\([0-7]{1,3}|.)", re.S)


def _pdf_text(stream: bytes) -> bytes:
    """The literal strings of a PDF content stream joined: kerned text is drawn as '[(Q) -0.4 (u) ...] TJ'."""
    def unescape(match: re.Match) -> bytes:
        code = match[1]
        return bytes([int(code, 8) & 0xFF]) if code[:1].isdigit() else {b"n": b"\n", b"r": b"\r"}.get(code, code)

    return b"".join(_PDF_ESCAPE.sub(unescape, literal) for literal in _PDF_STRING.findall(stream))


def expand(label: str, data: bytes, depth: int = 0) -> Iterator[tuple[str, bytes]]:
    """The bytes of a file and of what it contains: gzip, zip members (and their names), PNG text, PDF streams."""
    yield label, data
    if depth >= 3:
        return
    if data[:2] == b"\x1f\x8b":
        yield from expand(f"{label}!gunzip", gzip.decompress(data), depth + 1)
    elif data[:4] == b"PK\x03\x04":
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            for member in archive.infolist():
                yield f"{label}!{member.filename} (name)", member.filename.encode("utf-8")
                yield from expand(f"{label}!{member.filename}", archive.read(member), depth + 1)
    elif data.startswith(PNG_MAGIC):
        for text in _png_texts(data):
            yield f"{label}!png-text", text
    elif data.startswith(b"%PDF-"):
        for number, match in enumerate(_PDF_STREAM.finditer(data)):
            try:
                stream = zlib.decompress(match[1])
            except zlib.error:
                stream = match[1]
            yield f"{label}!stream{number}", stream
            yield f"{label}!stream{number}-text", _pdf_text(stream)
        # Drawn non-ASCII text is re-encoded glyph by glyph (matplotlib's Type 3 fonts); pypdf maps it back
        # to Unicode through the fonts' encodings, and the scanner then tries every encoding on it.
        from pypdf import PdfReader

        for number, page in enumerate(PdfReader(io.BytesIO(data)).pages):
            yield f"{label}!page{number}-text", page.extract_text().encode("utf-8")
    # Embedded files of a self-contained HTML report (base64 data URIs): invisible to a byte search.
    for number, match in enumerate(_DATA_URI.finditer(data)):
        yield from expand(f"{label}!data-uri{number}", base64.b64decode(match[1]), depth + 1)


def _trie_regex(patterns, digit_bounded: bool = False) -> re.Pattern:
    """One regex for all patterns, as a trie: ~10x faster than a substring search per pattern on megabytes.

    digit_bounded: a match may not touch another ASCII digit, so a numeric ID is not found inside a longer number.
    """
    trie: dict = {}
    for pattern in patterns:
        node = trie
        for byte in pattern:
            node = node.setdefault(byte, {})
        node[None] = {}

    def emit(node: dict) -> bytes:
        branches = [re.escape(bytes([byte])) + emit(child) for byte, child in sorted(
            (key, value) for key, value in node.items() if key is not None)]
        if not branches:
            return b""
        group = b"(?:" + b"|".join(branches) + b")"
        return group + b"?" if None in node else group  # a pattern may end here: every match is a whole pattern

    pattern = emit(trie)
    return re.compile(rb"(?<![0-9])" + pattern + rb"(?![0-9])" if digit_bounded else pattern, re.S)


def scan_tree(root: Path, patterns: dict[bytes, str], *, digit_bounded: bool = False) -> list[str]:
    """Findings 'where: what' for every pattern in any file or folder name or file content under root."""
    matcher = _trie_regex(patterns, digit_bounded)

    def found(label: str, data: bytes) -> list[str]:
        return [f"{label}: {patterns[match]}" for match in sorted({m[0] for m in matcher.finditer(data)})]

    findings = []
    for path in sorted(root.rglob("*")):
        relative = str(path.relative_to(root))
        findings += found(f"{relative} (name)", path.name.encode("utf-8", "surrogateescape"))
        if path.is_file() and not path.is_symlink():
            for label, data in expand(relative, path.read_bytes()):
                findings += found(label, data)
    return findings


def identifier_patterns(identifiers, what: str = "identifier") -> dict[bytes, str]:
    """Byte patterns (>= MIN_PATTERN_BYTES) of plain identifiers (dataset IDs, dates) in every encoding."""
    patterns: dict[bytes, str] = {}
    for identifier in identifiers:
        for form in _encodings(identifier):
            patterns.setdefault(form, f"{what} {identifier!r}")
    return {form: label for form, label in patterns.items() if len(form) >= MIN_PATTERN_BYTES}
