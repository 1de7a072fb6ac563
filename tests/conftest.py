"""Suite-wide test ordering."""

from __future__ import annotations

import pytest

# Fault tests SIGKILL trial workers and drivers and fill disks. Seen once under heavy load: a Ray started in the
# pytest process after them lost every trial worker at start. Until that is explained they run last, so no
# other test's Ray shares the machine with what a fault left behind.
_LAST = ("test_faults.py",)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: item.path.name in _LAST)  # stable: every other test keeps its order
