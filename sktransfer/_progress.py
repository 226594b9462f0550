"""What running work shows, by the ``verbose`` parameter that every estimator shares.

- ``"auto"`` (the default): as ``1`` where a person watches, as ``0`` elsewhere. A person
  watches when standard error is a terminal or the code runs in a notebook, in the main
  thread of the main process: the workers of ``GridSearchCV(n_jobs=...)`` (joblib's
  processes inherit the terminal), of Dask or of a thread pool stay quiet, and so do
  logs and CI.
- ``0`` or ``False``: nothing.
- ``1`` or ``True`` (or more): progress bars on standard error that count images, and,
  for a fine-tune, one line per epoch, numbered across the stages as ``history_`` is.

The bars are tqdm's (widgets in a notebook) and vanish when done; nothing here writes
colour codes.
"""

from __future__ import annotations

import multiprocessing
import sys
import threading

from tqdm.auto import tqdm

# history_ keys that an epoch's line leaves out: the epoch and the stage lead the line,
# the duration ends it, and the rest are skorch's bookkeeping.
_NOT_SHOWN = ("epoch", "stage", "dur", "batches", "train_batch_count", "valid_batch_count")


def shows_progress(verbose) -> bool:
    """Whether work run with this ``verbose`` shows its progress, here and now."""
    if isinstance(verbose, str):  # "auto", the only string the parameter accepts
        return watching()
    return verbose > 0  # a bool, a numpy bool or an int


def watching() -> bool:
    """Whether a person watches this work: standard error is a terminal or a notebook
    shows it, and this is the main thread of the main process."""
    if multiprocessing.parent_process() is not None:
        return False
    if threading.current_thread() is not threading.main_thread():
        return False
    return _is_terminal(sys.stderr) or _in_notebook()


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no stream, or a closed one
        return False


def _in_notebook() -> bool:
    """Whether this runs in a Jupyter kernel (a notebook, JupyterLab, Colab)."""
    shell = sys.modules.get("IPython")
    get_ipython = getattr(shell, "get_ipython", None)
    return get_ipython is not None and getattr(get_ipython(), "kernel", None) is not None


def image_bar(total: int, desc: str, enabled: bool) -> tqdm:
    """A progress bar over ``total`` images on standard error (a no-op when not
    ``enabled``); it vanishes when closed."""
    return tqdm(
        total=total,
        desc=desc,
        unit="image",
        unit_scale=False,
        leave=False,
        dynamic_ncols=True,
        file=sys.stderr,
        disable=not enabled,
    )


def epoch_line(record: dict, total_epochs: int) -> str:
    """One line of a finished epoch of ``history_``: its number of ``total_epochs``,
    its stage, its scores, its duration."""
    scores = ", ".join(
        f"{key} {_number(value)}"
        for key, value in record.items()
        if key not in _NOT_SHOWN and not key.endswith("_best") and _is_number(value)
    )
    seconds = record.get("dur")
    duration = f" ({seconds:.1f} s)" if _is_number(seconds) else ""
    return f"epoch {record['epoch']}/{total_epochs} {record.get('stage', '')}: {scores}{duration}"


def write_line(line: str) -> None:
    """``line`` on standard error, above any open progress bar."""
    tqdm.write(line, file=sys.stderr)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _number(value) -> str:
    return str(value) if isinstance(value, int) else f"{value:.4g}"
