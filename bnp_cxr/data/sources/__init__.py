"""Public chest-radiograph datasets written as the project's standard manifest, one module per source.

Every source has the same interface: `write(dataset_dir, out_dir, **options) -> SourceManifest`, which
writes out_dir/manifest.csv (data_manifests/README.md schema, stand-in labs and finding columns) and
out_dir/rejects.csv, with a symlink to the dataset instead of a copy.
"""

from __future__ import annotations

from typing import Callable

from bnp_cxr.data.sources.common import SourceManifest
from bnp_cxr.data.sources.mimic import write_mimic_manifest
from bnp_cxr.data.sources.montgomery import write_montgomery_manifest
from bnp_cxr.data.sources.nih import write_nih_manifest
from bnp_cxr.data.sources.shenzhen import write_shenzhen_manifest

SOURCES: dict[str, Callable[..., SourceManifest]] = {"shenzhen": write_shenzhen_manifest, "nih": write_nih_manifest,
                                                     "montgomery": write_montgomery_manifest,
                                                     "mimic": write_mimic_manifest}

__all__ = ["SOURCES", "SourceManifest", "write_mimic_manifest", "write_montgomery_manifest", "write_nih_manifest",
           "write_shenzhen_manifest"]
