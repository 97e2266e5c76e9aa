"""Fixtures shared by several test modules: a seeded small CNN, the small phantom cohort and a site salt."""

from pathlib import Path

import pytest
from archives import SMALL_CNN_SIZE


@pytest.fixture(scope="module")
def model():
    """small_cnn at 32 px from seed 0, untrained; built afresh per module, whose tests must not change it."""
    import keras

    from bnp_cxr.models import build_model

    keras.utils.set_random_seed(0)
    return build_model("small_cnn", SMALL_CNN_SIZE)


@pytest.fixture(scope="session")
def small_cohort(tmp_path_factory) -> Path:
    """The small phantom cohort (CohortConfig.small(): 24 images, DICOMs, manifest.csv, labs.csv); read-only."""
    from bnp_cxr.phantom import CohortConfig, generate_cohort

    out = tmp_path_factory.mktemp("small_cohort")
    generate_cohort(out, CohortConfig.small(), workers=1, progress=False)
    return out


TEST_SALT = "bnp-cxr-test-site-secret"


@pytest.fixture(scope="module")
def site_salt():
    """BNP_CXR_SALT set for the module (tools run in subprocesses inherit it): a user manifest needs a site salt."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("BNP_CXR_SALT", TEST_SALT)
        patch.delenv("BNP_CXR_SALT_FILE", raising=False)
        yield TEST_SALT
