"""``pytest_subtests`` for LM Studio's SDK suite where pytest has subtests built in (9.0 on).

The suite (written for pytest 8 and the ``pytest-subtests`` plugin) imports ``SubTests`` from
here for its type annotations; pytest 9 serves the ``subtests`` fixture itself.  This folder is
on the suite's path only when ``pytest_subtests`` is not installed.
"""

from _pytest.subtests import Subtests as SubTests

__all__ = ["SubTests"]
