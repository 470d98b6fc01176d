"""Transformers' weight-loading report without terminal colour codes when it goes to a log file.

`from_pretrained` logs a "LOAD REPORT" table when weights are missing, unexpected or reshaped (a
classification head loaded from a pretraining checkpoint reports its new ``classifier.*`` weights).
Transformers 5 writes the report's title in bold with ANSI escape codes whatever the output is, so
a log file or a batch job's output gets raw ``ESC[1m`` sequences. `plain_load_reports` strips them
from that logger's records while stderr is not a terminal; in a terminal the report keeps its colours.
It is a context manager rather than an import-time setting so that importing astropt_hf changes
nothing in transformers' logging.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["LOAD_REPORT_LOGGER", "plain_load_reports", "strip_ansi"]

# The logger transformers' modeling_utils passes to its load report.
LOAD_REPORT_LOGGER = "transformers.modeling_utils"
_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def strip_ansi(text: str) -> str:
    """`text` without ANSI escape sequences (colours, bold, cursor moves)."""
    return _ANSI_ESCAPE.sub("", text)


class _StripAnsiFilter(logging.Filter):
    """Removes ANSI escapes from a record's message and string arguments; drops nothing."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = strip_ansi(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(strip_ansi(a) if isinstance(a, str) else a for a in record.args)
        return True


@contextmanager
def plain_load_reports() -> Iterator[None]:
    """Within the block, transformers' load reports carry no ANSI codes unless stderr is a terminal."""
    if sys.stderr is not None and sys.stderr.isatty():
        yield
        return
    logger = logging.getLogger(LOAD_REPORT_LOGGER)
    plain = _StripAnsiFilter()
    logger.addFilter(plain)
    try:
        yield
    finally:
        logger.removeFilter(plain)
