"""The suite's own scheduling: make test's workers take the long modules first (tests/conftest.py)."""

from tests.conftest import LONG_MODULES, REPO


def test_every_long_module_named_exists():
    missing = [name for name in LONG_MODULES if not (REPO / "tests" / name).is_file()]
    assert not missing, f"LONG_MODULES names modules that are gone (renamed?): {missing}"
    assert len(set(LONG_MODULES)) == len(LONG_MODULES)
