"""Messages of every stage through :mod:`logging`, scrubbed of paths and header values.

All progress and messages go to the ``prrt`` logger (``logging.getLogger("prrt")``
and its children such as ``prrt.loading``); the command line configures it
(:func:`configure`: ``-v`` for debug messages, ``--quiet`` for warnings only). A
library user who does nothing sees warnings only (Python's default).

A stage's progress lines (:func:`say`: the one line per stage and page of ``make
book``, "generating the synthetic cohort ...") are info records that go to
standard output, as the command's own account of what it did, so that ``make book
> build.log`` keeps them; every other record goes to standard error. Worker
processes that are spawned (not forked) start with an unconfigured logger:
:func:`level` in the parent and :func:`configure_level` as the pool's initializer
carry the setting over.

Nothing read from a header may reach a terminal, a log or a page. Two routes
could carry such values and are closed here:

* pydicom's own warnings and log records ("Invalid value for VR UI: '1.2.03...'",
  common in real exports) print the offending value. :func:`pydicom_messages`
  captures them while a file is read and keeps only their kind ("Invalid
  value for VR UI"), counted; :func:`configure` also replaces every record of
  the ``pydicom`` logger by its kind.
* an unexpected error's message and traceback may quote a value or a path.
  :func:`scrub` replaces quoted values, DICOM UIDs, dates and the given
  folders; :func:`write_debug` appends the scrubbed traceback to
  ``WORK/logs/debug.log`` so that "unexpected ValueError" can be acted on.
"""

from __future__ import annotations

import collections
import contextlib
import datetime as dt
import logging
import re
import sys
import traceback
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

__all__ = [
    "DEBUG_LOG",
    "LOGGER",
    "configure",
    "configure_level",
    "get_logger",
    "level",
    "message_kind",
    "pydicom_messages",
    "say",
    "scrub",
    "write_debug",
]

LOGGER = "prrt"
DEBUG_LOG = Path("logs") / "debug.log"
"""Where :func:`write_debug` appends, relative to the work folder."""

_QUOTED = re.compile(r"""'[^'\n]*'|"[^"\n]*"|b'[^'\n]*'""")
_UID = re.compile(r"\b\d+(?:\.\d+){3,}\b")
_DATE = re.compile(r"\b(?:19|20)\d{6}(?:\d{2,6}(?:\.\d+)?)?\b")
_KIND_END = re.compile(r"""[:'"(<\[]""")


def get_logger(name: str = "") -> logging.Logger:
    """The ``prrt`` logger, or its child ``prrt.<name>``."""
    return logging.getLogger(f"{LOGGER}.{name}" if name else LOGGER)


def message_kind(text: str) -> str:
    """The kind of a library message without any value: the words before the first ``:``, quote or bracket.

    ``"Invalid value for VR UI: '1.2.03.4'. Please see ..."`` -> ``"Invalid value for VR UI"``.
    """
    head = _KIND_END.split(str(text), maxsplit=1)[0].strip().rstrip(".")
    head = _UID.sub("<uid>", _DATE.sub("<date>", head))
    return head[:80] or "unnamed message"


def scrub(text: str, paths: Iterable[str | Path] = ()) -> str:
    """``text`` without the given folders, quoted values, DICOM UIDs and dates.

    Parameters
    ----------
    text : str
        An error message or traceback.
    paths : iterable of path
        Folders whose names may be identifying (a patient folder, the data
        folder); each is replaced, in every spelling, by ``<folder>``.
    """
    forms: set[str] = set()
    for p in paths:
        p = Path(p)
        forms |= {str(p), p.as_posix()}
        with contextlib.suppress(OSError, RuntimeError):
            forms.add(str(p.resolve()))
    for form in sorted((f for f in forms if len(f) > 1), key=len, reverse=True):
        text = text.replace(form, "<folder>")
    text = _QUOTED.sub("'<value>'", text)
    return _DATE.sub("<date>", _UID.sub("<uid>", text))


class _Stderr(logging.StreamHandler):
    """A handler writing to whatever ``sys.stderr`` is at the time (a test's capture, a notebook's stream)."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ sets it
        pass


class _Stdout(logging.StreamHandler):
    """A handler writing to whatever ``sys.stdout`` is at the time; only the progress lines of :func:`say`."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stdout

    @stream.setter
    def stream(self, value) -> None:
        pass

    def emit(self, record: logging.LogRecord) -> None:
        super().emit(record)
        self.flush()  # one line per stage as it finishes, also when stdout is a file


_PROGRESS = "prrt_progress"


def _is_progress(record: logging.LogRecord) -> bool:
    return bool(getattr(record, _PROGRESS, False)) and record.levelno < logging.WARNING


def say(name: str, message: str) -> None:
    """One progress line of a stage, ``message`` as it is: info on ``prrt.<name>``, shown on standard output.

    ``--quiet`` silences it (warnings only); unconfigured (a library call), it
    is not shown, like every info message.
    """
    get_logger(name).info(message, extra={_PROGRESS: True})


class _KindOnly(logging.Filter):
    """Rewrite a pydicom log record to its kind: pydicom's messages quote header values."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = f"pydicom: {message_kind(record.getMessage())}"
        record.args = ()
        return True


def _scrub_pydicom_logger() -> None:
    log = logging.getLogger("pydicom")
    if not any(isinstance(f, _KindOnly) for f in log.filters):
        log.addFilter(_KindOnly())


@contextlib.contextmanager
def pydicom_messages() -> Iterator[collections.Counter]:
    """Capture pydicom's warnings and log records while reading; yield a Counter of their kinds.

    Neither the warning nor the log record reaches the terminal: the caller
    reports the counts (which hold no value) in its own words. Warnings from
    other libraries pass through unchanged.
    """
    counts: collections.Counter = collections.Counter()
    logged: set[str] = set()
    log = logging.getLogger("pydicom")

    class _Swallow(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            logged.add(message_kind(record.getMessage()))
            return False

    swallow = _Swallow()
    log.addFilter(swallow)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield counts
    finally:
        log.removeFilter(swallow)
    for w in caught:
        if "pydicom" in str(getattr(w, "filename", "")) or w.category.__module__.startswith("pydicom"):
            counts[message_kind(str(w.message))] += 1
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    for kind in logged - set(counts):
        counts[kind] = 1  # logged without a warning


def configure(verbosity: int = 0, quiet: bool = False) -> logging.Logger:
    """Send the ``prrt`` logger to stderr: warnings only (``quiet``), info (default) or debug (``verbosity >= 1``).

    Also makes every record of the ``pydicom`` logger show its kind only. Safe
    to call again (the handler is replaced, not added twice).
    """
    return configure_level(logging.WARNING if quiet else logging.DEBUG if verbosity >= 1 else logging.INFO)


def configure_level(level_: int) -> logging.Logger:
    """:func:`configure` by level (``logging.INFO``, ...); the initializer of a spawned worker pool."""
    logger = get_logger()
    logger.setLevel(level_)
    for h in [h for h in logger.handlers if getattr(h, "_prrt", False)]:
        logger.removeHandler(h)
    err, out = _Stderr(), _Stdout()
    err.addFilter(lambda r: not _is_progress(r))
    out.addFilter(_is_progress)
    for handler in (err, out):
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler._prrt = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    logger.propagate = False
    _scrub_pydicom_logger()
    return logger


def level() -> int | None:
    """The level :func:`configure` set on the ``prrt`` logger, or ``None`` if it was never configured."""
    logger = get_logger()
    return logger.level if any(getattr(h, "_prrt", False) for h in logger.handlers) else None


def write_debug(work_dir: str | Path, where: str, exc: BaseException, paths: Iterable[str | Path] = ()) -> Path:
    """Append ``exc``'s traceback, scrubbed (:func:`scrub`), to ``WORK/logs/debug.log``; return its path.

    Parameters
    ----------
    work_dir : path
        The work folder (the log stays inside it).
    where : str
        What was being done, e.g. ``"preprocess patient PRRT-007"`` (a study id, never a hospital id).
    exc : BaseException
    paths : iterable of path
        Folders to hide, besides the work folder itself.
    """
    work = Path(work_dir)
    path = work / DEBUG_LOG
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    text = scrub(text, [*paths, work])
    stamp = dt.datetime.now().isoformat(timespec="seconds")
    with open(path, "a", encoding="utf-8") as fh:  # appends of one block: concurrent workers do not mix lines
        fh.write(f"--- {stamp} {where}\n{text}\n")
    return path
