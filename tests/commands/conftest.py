"""The commands' tests share, per module, one copy of the repository and a client of its default store."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import copy_repository, store_client, store_uri


@pytest.fixture(scope="module")
def copy(tmp_path_factory) -> Path:
    """One copy of the repository for the module (conftest's ``copy_repository``)."""
    return copy_repository(tmp_path_factory.mktemp("commands") / "repo")


@pytest.fixture(scope="module")
def client(copy):
    """A client of the copy's own store, the one its commands default to."""
    return store_client(store_uri(copy))
