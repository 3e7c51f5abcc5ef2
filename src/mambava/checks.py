"""Checks shared by the readers, the configuration layer and training.

Errors a user can fix (a malformed file, a setting that cannot work, a diverged run) are raised
as :class:`InputError` (or a subclass) with a message that names the file and, where there is
one, the line; the ``mambava`` command prints them as one line each and exits with code 2
(``--verbose`` adds the traceback). Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

BOM = b"\xef\xbb\xbf"


class InputError(ValueError):
    """Bad input or settings the user can fix; the message names the file (and line)."""


class NonFiniteError(InputError):
    """A NaN or infinite loss, gradient, prediction or input value; the message says where."""


def read_text_lines(path: str | Path) -> list[str]:
    """The lines of a UTF-8 text file, accepting the quirks real copies carry.

    A UTF-8 byte-order mark is dropped, CRLF and CR line ends are accepted, and blank lines at
    the end are removed. Text that is not UTF-8 raises :class:`InputError` naming the line and
    column of the first undecodable byte. A missing file raises FileNotFoundError.
    """
    path = Path(path)
    data = path.read_bytes()
    if data.startswith(BOM):
        data = data[len(BOM):]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        col = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise InputError(
            f"{path}:{line}: not UTF-8 text (byte 0x{data[exc.start]:02x} at column {col}; "
            "save the file as UTF-8)"
        ) from None
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    return lines


def is_hidden(name: str) -> bool:
    """Stray files a copy picks up on the way (.DS_Store, ._AppleDouble, .nfs*, editor swap files)."""
    return name.startswith(".") or name in ("Thumbs.db", "desktop.ini")


def require_finite(values, what: str) -> None:
    """Raise :class:`NonFiniteError` if ``values`` holds a NaN or an infinity; ``what`` says where."""
    arr = np.asarray(values)
    if arr.dtype.kind in "fc" and not np.isfinite(arr).all():
        bad = ~np.isfinite(arr)
        first = np.argwhere(bad)[0]
        kind = "NaN" if np.isnan(arr[tuple(first)]) else "infinite value"
        raise NonFiniteError(
            f"{what}: {int(bad.sum())} non-finite value(s), the first a {kind} at index {tuple(int(i) for i in first)}"
        )


def check_training_step(step: int, loss: float, grad_norm: float, x=None, pred=None) -> None:
    """Stop a run whose loss or gradient norm is NaN or infinite, before the optimizer step that
    would spread it into the weights; name the step and the first cause among the inputs, the
    predictions, the loss and the gradient. Costs nothing while both numbers are finite."""
    import math

    if math.isfinite(loss) and math.isfinite(grad_norm):
        return
    import torch

    if x is not None and not bool(torch.isfinite(x).all()):
        cause = "the input features of the batch hold NaN or inf values (check or re-extract the feature files)"
    elif pred is not None and not bool(torch.isfinite(pred).all()):
        cause = ("the model's predictions are NaN or inf: the run diverged "
                 "(lower train.lr or train.grad_clip, or check the features' scale)")
    elif not math.isfinite(loss):
        cause = f"the loss is {loss} (predictions finite; a degenerate batch?)"
    else:
        cause = f"the gradient norm is {grad_norm} (the run diverged: lower train.lr)"
    raise NonFiniteError(f"training stopped at step {step}: {cause}; nothing from this step was saved")
