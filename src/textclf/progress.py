"""Progress bars for the steps a user otherwise waits through in silence (served evaluation,
the C grid of bow and the reference, reading and tokenizing a large file), made in one place.

Bars go to stderr and only when stderr is a terminal, so CI logs and redirected output stay
clean. `TEXTCLF_PROGRESS=1` forces them on (e.g. to watch a job's log with `tail -f`), `=0`
off even in a terminal; unset or any other value: on in a terminal only.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

ENV = "TEXTCLF_PROGRESS"
T = TypeVar("T")


def disabled() -> bool | None:
    """tqdm's `disable`: False forced on, True forced off, None (on in a terminal only)."""
    switch = os.environ.get(ENV, "").strip().lower()
    if switch in ("1", "true", "yes", "on"):
        return False
    if switch in ("0", "false", "no", "off"):
        return True
    return None


def bar(
    items: Iterable[T], total: int | None = None, desc: str = "", unit: str = "it"
) -> Iterator[T]:
    """`items`, ticking a bar with an ETA on stderr per item (`total` for iterators without a
    length). While it shows, console log lines are written above it instead of through it.
    tqdm is imported here: a served model loads modules that use this one."""
    from tqdm.auto import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    shown = tqdm(
        items,
        total=total,
        desc=desc,
        unit=unit,
        file=sys.stderr,
        disable=disabled(),
        dynamic_ncols=True,
    )
    logs_above = not shown.disable and _logs_to_console()
    with shown, logging_redirect_tqdm(tqdm_class=tqdm) if logs_above else contextlib.nullcontext():
        yield from shown


def _logs_to_console() -> bool:
    """Whether the root logger writes to stdout or stderr (Hydra's and the CLI's do)."""
    return any(
        isinstance(h, logging.StreamHandler) and h.stream in (sys.stdout, sys.stderr)
        for h in logging.root.handlers
    )
