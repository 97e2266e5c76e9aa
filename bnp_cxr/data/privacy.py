"""Pseudonymous identifiers: salted keyed hashes of patient and image identifiers.

Derived data (records, logs, CSVs, figures, file names) carries only these IDs. The salt is a
site secret supplied by the user; without it, the hash of a known MRN could be recomputed by anyone.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
from pathlib import Path

SALT_ENV = "BNP_CXR_SALT"
SALT_FILE_ENV = "BNP_CXR_SALT_FILE"
# Public, hence no protection: fine for the synthetic phantom demo, never for patient data.
DEMO_SALT = "bnp-cxr-demo-salt-not-secret"

_log = logging.getLogger(__name__)


class MissingSaltError(ValueError):
    """Patient data without a site salt: the public demo salt would make its pseudonyms reversible."""


def _user_salt(salt: str | None) -> str | None:
    """The salt the user gave: explicit > $BNP_CXR_SALT > file at $BNP_CXR_SALT_FILE; None when none is set."""
    if salt:
        return salt
    if os.environ.get(SALT_ENV):
        return os.environ[SALT_ENV]
    salt_file = os.environ.get(SALT_FILE_ENV)
    if salt_file:
        text = Path(salt_file).read_text(encoding="utf-8").strip()
        if not text:
            raise ValueError(f"{SALT_FILE_ENV}={salt_file}: the salt file is empty")
        return text
    return None


def resolve_salt(salt: str | None = None, *, warn_on_demo: bool = True) -> str:
    """Return the pseudonymisation salt: explicit > $BNP_CXR_SALT > file at $BNP_CXR_SALT_FILE > demo salt."""
    given = _user_salt(salt)
    if given:
        return given
    if warn_on_demo:
        _log.warning(
            "no salt given (%s / %s): using the public demo salt; pseudonymous IDs are then "
            "reversible by dictionary attack. Set a site secret before using patient data.",
            SALT_ENV,
            SALT_FILE_ENV,
        )
    return DEMO_SALT


def site_salt(salt: str | None = None) -> str:
    """The site's own salt for a user manifest (explicit, $BNP_CXR_SALT or $BNP_CXR_SALT_FILE); never the demo salt."""
    given = _user_salt(salt)
    if not given:
        raise MissingSaltError(
            f"no site salt: set {SALT_ENV} to a long random secret (export {SALT_ENV}='...') or {SALT_FILE_ENV} "
            "to a file holding it, and keep it for every later run on this archive; the public demo salt is for "
            "the built-in phantom only (pseudonymous IDs under it can be reversed by anyone)")
    return given


def pseudonymize(value: str, salt: str, *, kind: str = "patient", length: int = 16) -> str:
    """Keyed hash (HMAC-SHA256) of `value`, hex, prefixed by the kind's initial, e.g. 'p3f9a...'."""
    digest = hmac.new(salt.encode("utf-8"), f"{kind}\x00{value}".encode("utf-8"), hashlib.sha256)
    return kind[0] + digest.hexdigest()[:length]


def unit_interval_hash(value: str, key: str) -> float:
    """Deterministic uniform number in [0, 1) from a keyed hash; used for patient-level splits."""
    digest = hmac.new(key.encode("utf-8"), value.encode("utf-8"), hashlib.sha256).digest()
    return int.from_bytes(digest[:8], "big") / 2**64
