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


def resolve_salt(salt: str | None = None, *, warn_on_demo: bool = True) -> str:
    """Return the pseudonymisation salt: explicit > $BNP_CXR_SALT > file at $BNP_CXR_SALT_FILE > demo salt."""
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
    if warn_on_demo:
        _log.warning(
            "no salt given (%s / %s): using the public demo salt; pseudonymous IDs are then "
            "reversible by dictionary attack. Set a site secret before using patient data.",
            SALT_ENV,
            SALT_FILE_ENV,
        )
    return DEMO_SALT


def pseudonymize(value: str, salt: str, *, kind: str = "patient", length: int = 16) -> str:
    """Keyed hash (HMAC-SHA256) of `value`, hex, prefixed by the kind's initial, e.g. 'p3f9a...'."""
    digest = hmac.new(salt.encode("utf-8"), f"{kind}\x00{value}".encode("utf-8"), hashlib.sha256)
    return kind[0] + digest.hexdigest()[:length]


def unit_interval_hash(value: str, key: str) -> float:
    """Deterministic uniform number in [0, 1) from a keyed hash; used for patient-level splits."""
    digest = hmac.new(key.encode("utf-8"), value.encode("utf-8"), hashlib.sha256).digest()
    return int.from_bytes(digest[:8], "big") / 2**64
