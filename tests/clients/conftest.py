"""BudgetKind rocketchat_API this run drives, and the deselection of the other version's tests.

One venv holds one version of `rocketchat_API`, so scripts/test.sh runs this directory twice
(`.venv/rc371` with RC_API_EXPECT=3.7.1, `.venv/rc300` with RC_API_EXPECT=3.0.0). Tests marked
`@pytest.mark.rc_api("X")` belong to version X and are *deselected* in the other run; nothing is
ever skipped. If the package is missing, or is not the version RC_API_EXPECT names, every test
fails with a message saying so.
"""

import importlib.metadata
import os
import sys

import pytest

KNOWN_VERSIONS = ("3.7.1", "3.0.0")


def _resolve():
    """Returns (expected_version, None) or (None, error message)."""
    want = os.environ.get("RC_API_EXPECT", "").strip()
    try:
        have = importlib.metadata.version("rocketchat_API")
    except importlib.metadata.PackageNotFoundError:
        return None, (
            f"rocketchat_API is not installed in this Python ({sys.executable}). "
            f"Run scripts/test.sh (it makes .venv/rc371 and .venv/rc300), or "
            f"`pip install pytest rocketchat_API=={want or '3.7.1'}` into this venv."
        )
    if want and want != have:
        return None, (
            f"RC_API_EXPECT={want} but this Python ({sys.executable}) has "
            f"rocketchat_API {have}: the venv does not hold the client this run is meant to test."
        )
    version = want or have
    if version not in KNOWN_VERSIONS:
        return None, (
            f"rocketchat_API {version} is not one this suite knows ({', '.join(KNOWN_VERSIONS)}); "
            f"set RC_API_EXPECT and install one of them."
        )
    return version, None


EXPECTED, EXPECT_ERROR = _resolve()


def pytest_report_header(config):
    if EXPECT_ERROR:
        return f"rocketchat_API: NOT USABLE: {EXPECT_ERROR}"
    return f"rocketchat_API: {EXPECTED} (RC_API_EXPECT={os.environ.get('RC_API_EXPECT', '<unset>')})"


def pytest_collection_modifyitems(config, items):
    if EXPECT_ERROR:
        return  # keep everything: the autouse fixture below fails each test with the reason
    keep, drop = [], []
    for item in items:
        marks = list(item.iter_markers(name="rc_api"))
        if marks and all(m.args[0] != EXPECTED for m in marks):
            drop.append(item)
        else:
            keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.fixture(autouse=True)
def _client_is_the_expected_one():
    if EXPECT_ERROR:
        pytest.fail(EXPECT_ERROR, pytrace=False)


@pytest.fixture(scope="session")
def rc_version():
    return EXPECTED
