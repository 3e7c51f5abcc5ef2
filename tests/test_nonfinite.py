"""Non-finite values stop the run: NaN/inf features, a diverging learning rate, NaN predictions.

The references are independent facts: a NaN or inf anywhere in the predictions must raise (the
CCC formula gives NaN, never 0), and training must stop at the step where it first happens,
before anything from that step is saved.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from mambava.checks import InputError, NonFiniteError
from mambava.data.windows import Video, Windows
from mambava.metrics import bootstrap_ccc, ccc, ccc_va
from mambava.train import fit
from test_train import TinyCausal, configs, make_videos, train_once


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_metrics_refuse_non_finite_predictions(bad):
    rng = np.random.default_rng(0)
    true = rng.uniform(-1, 1, (50, 2))
    pred = true + rng.normal(0, 0.1, (50, 2))
    pred[7, 1] = bad
    with pytest.raises(NonFiniteError, match=r"predictions: 1 non-finite value\(s\)"):
        ccc(pred[:, 1], true[:, 1])
    with pytest.raises(NonFiniteError):
        ccc_va(pred, true)
    with pytest.raises(NonFiniteError):
        bootstrap_ccc(pred, true, np.repeat(np.arange(5), 10), n_boot=5)
    # the same prediction at an unlabelled frame is refused too (a diverged model, not a gap)
    true[7, 1] = -5
    with pytest.raises(NonFiniteError):
        ccc(pred[:, 1], true[:, 1])
    # labels may be NaN/-5 (not annotated): masked, as before
    ok = pred.copy()
    ok[7, 1] = 0.0
    true[8, 0] = np.nan
    assert np.isfinite(ccc_va(ok, true)["p_va"])


def test_nan_in_features_stops_training_at_step_1(tmp_path):
    vids = make_videos()
    for i, v in enumerate(vids[:4]):
        f = np.array(v.features)
        f[::10, 2] = np.nan  # one in every window of 32 frames
        vids[i] = Video(v.name, f, v.labels)
    tc, ec = configs(seed=0)
    torch.manual_seed(0)
    with pytest.raises(NonFiniteError, match="training stopped at step 1: the input features of the batch hold NaN"):
        fit(TinyCausal(6), Windows(vids[:4], 32, 24), vids[4:], tc, ec, torch.device("cpu"), tmp_path,
            fingerprint="fp", progress=False)
    assert not (tmp_path / "best.pt").exists() and not (tmp_path / "last.pt").exists()


def test_nan_in_a_feature_file_is_named_when_loading(tmp_path):
    import pandas as pd

    from mambava.inference import load_videos

    f = np.zeros((20, 4), np.float16)
    f[13, 1] = np.inf
    np.save(tmp_path / "v.npy", f)
    np.save(tmp_path / "v.mask.npy", np.ones(20, bool))
    index = pd.DataFrame([{"video": "v", "split": "train", "annotation": ""}])
    with pytest.raises(InputError, match=r"v\.npy \(row i = frame i\+1.*1 non-finite value\(s\), the first a infinite value at index \(13, 1\)"):
        load_videos(index, ["v"], tmp_path)


def test_diverging_learning_rate_stops_training(tmp_path):
    # lr 1e20: the weights blow up after one step and the next training batch's predictions are inf/NaN
    with pytest.raises(NonFiniteError, match="training stopped at step 2: the model's predictions are NaN or inf"):
        train_once(tmp_path / "a", lr=1e20)
    assert not (tmp_path / "a" / "best.pt").exists()
    # lr 1e10: training batches stay finite under dropout, the first validation does not
    with pytest.raises(NonFiniteError, match=r"training stopped at step 3: validation: model predictions: \d+ non-finite"):
        train_once(tmp_path / "b", lr=1e10)
    assert not (tmp_path / "b" / "best.pt").exists()  # a diverged model is never saved as best


class NanGrad(nn.Module):
    """Finite outputs, NaN gradient (sqrt at 0 has an infinite derivative, times 0 = NaN)."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(6, 2)
        self.z = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return self.lin(x) + torch.sqrt(self.z) * 0.0


def test_nan_gradient_stops_training(tmp_path):
    tc, ec = configs(seed=0)
    vids = make_videos()
    with pytest.raises(NonFiniteError, match="training stopped at step 1: the gradient norm is nan"):
        fit(NanGrad(), Windows(vids[:4], 32, 24), vids[4:], tc, ec, torch.device("cpu"), tmp_path,
            fingerprint="fp", progress=False)


def test_evaluate_cli_reports_non_finite_as_one_line():
    """The CLI answers a NonFiniteError like any expected error (exit 2, no traceback)."""
    from mambava.cli import report_error

    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stderr(buf):
        assert report_error(NonFiniteError("training stopped at step 2: x")) == 2
    assert buf.getvalue() == "error: training stopped at step 2: x\n"
