"""Every exception and warning type the workbench raises on purpose, in one module that imports nothing.

Each module that raises one re-exports it (``from workbench.config import ConfigError`` keeps working),
but the class is defined here once, so ``python -m workbench`` can catch them all without importing
torch, pandas or ray. Messages name the file / row / key / value and what was expected.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """An invalid config; the message names the key path, the rule and the value."""


class DataError(ValueError):
    """Bad data: the message names the file, the column and the row."""


class DataWarning(UserWarning):
    """Data that loads but may not mean what the user thinks (labels equal up to case or spacing, a split
    that cannot honour its fractions). The CLI prints these as ``warning: ...`` lines."""


class TaxonomyError(ValueError):
    """A label table or a query that contradicts the taxonomy."""


class StoreError(RuntimeError):
    """A store operation that cannot be done; the message names the store path and the run."""


class LaunchError(RuntimeError):
    """A run that cannot be launched; the message names the run and the reason."""


class SinkError(RuntimeError):
    """A sink failed; the message names the sink and the event."""


class TrainingFailed(RuntimeError):
    """The run cannot go on (a non-finite loss): it is recorded as ``failed`` with this message, and
    the CLI prints the message as one line."""


# what the CLIs print as one ``error: ...`` line with exit code 2 (bad input, nothing trained)
USER_ERRORS = (ConfigError, DataError, TaxonomyError, StoreError, LaunchError)
