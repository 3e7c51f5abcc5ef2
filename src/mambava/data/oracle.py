"""Oracle features: what the twin rendered into each frame, as a feature store (the ladder's middle rung).

The signal ladder measures where the valence/arousal signal is lost. Its three rungs are

1. the label ceiling: the twin's latent state at label time against the labels (only annotator
   noise between them);
2. **oracle features** (this module): the temporal models trained and scored exactly like the
   real run, but on the parameters the twin drew into each image instead of the MAE features:
   a perfect frame encoder. No latent state and nothing a camera could not see: a parameter
   hidden by an occlusion (mouth covered, eyes covered, forehead covered) is blanked, and the
   occlusion itself is a feature; frames without a face crop on disk are missing exactly as for
   the MAE features (forward-filled, mask False);
3. the MAE features.

The store has the layout of :mod:`mambava.features.extract` (``<video>.npy`` float16,
``<video>.mask.npy``), so the same training and evaluation code reads it. Columns are
standardised with the mean and standard deviation of the face frames of the official training
and validation videos (never the test videos; no labels are involved). The twin's derived
statistics (``blink_onset``, ``motion_energy``) are *not* features: a camera sees the eyelid and
the head position, and a temporal model has to compute blinks and motion from them.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from mambava.io import write_json

log = logging.getLogger("mambava.oracle")

# Rendered parameters used as they are (see mambava.data.synthetic.expression_track).
DIRECT = ("mouth_curve", "brow_tilt", "eye_open", "mouth_open", "dx", "dy", "roll", "yaw", "pitch",
          "light_strength", "brightness", "blur")
# Occlusion regions drawn by the renderer (occlusion = 1 + region) and what each one hides.
REGIONS = ("eyes", "mouth", "cheek", "forehead")
HIDDEN_BY = {"eyes": ("eye_open", "brow_tilt"), "mouth": ("mouth_curve", "mouth_open"), "cheek": (),
             "forehead": ("brow_tilt",)}
COLUMNS = (*DIRECT, "light_cos", "light_sin", *(f"occluded_{r}" for r in REGIONS), "occluder_object")


def oracle_matrix(truth: dict) -> np.ndarray:
    """(n, len(COLUMNS)) float64 raw oracle features of one video from its truth arrays.

    Hidden parameters are NaN (the caller standardises and then sets them to 0, the mean).
    """
    n = len(truth["mouth_curve"])
    cols = {k: np.asarray(truth[k], dtype=np.float64).copy() for k in DIRECT}
    region = np.asarray(truth["occlusion"]).round().astype(int)  # 0 none, 1 + region index
    for i, r in enumerate(REGIONS):
        hit = region == i + 1
        cols[f"occluded_{r}"] = hit.astype(np.float64)
        for k in HIDDEN_BY[r]:
            cols[k][hit] = np.nan
    angle = np.asarray(truth["light_angle"], dtype=np.float64)
    cols["light_cos"], cols["light_sin"] = np.cos(angle), np.sin(angle)
    cols["occluder_object"] = ((region > 0) & (np.asarray(truth["occlusion_kind"]) > 0)).astype(np.float64)
    out = np.stack([cols[c] for c in COLUMNS], axis=1)
    assert out.shape == (n, len(COLUMNS))
    return out


def truth_dir(cfg) -> Path:
    """Where the twin's ground truth lives (beside its Aff-Wild2 layout)."""
    return Path(cfg.data.root).parent / "truth"


def load_truth(path: str | Path) -> dict:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def build_oracle_store(index: pd.DataFrame, truth: str | Path, out_dir: str | Path) -> dict:
    """Write the oracle feature store for every video of ``index`` (module doc); returns a summary."""
    from mambava.features.store import feature_path, fill_missing, mask_path, save_array

    truth, out = Path(truth), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    raw, masks = {}, {}
    for row in index.itertuples():
        t = load_truth(truth / f"{row.video}.npz")
        x = oracle_matrix(t)
        n = int(row.n_frames)
        if len(x) != n:
            raise ValueError(f"{truth / (row.video + '.npz')}: {len(x)} frames but the index says {n}")
        raw[row.video], masks[row.video] = x, ~np.asarray(t["missing"], dtype=bool)
    fit = [raw[v][masks[v]] for v in index.loc[index["split"] != "test", "video"]]
    stack = np.concatenate(fit)
    mean, std = np.nanmean(stack, axis=0), np.nanstd(stack, axis=0)
    std[~(std > 1e-8)] = 1.0
    for video, x in raw.items():
        z = np.nan_to_num((x - mean) / std, nan=0.0)
        m = masks[video]
        save_array(mask_path(out, video), m)
        save_array(feature_path(out, video), fill_missing(z, m).astype(np.float16))
    summary = {"columns": list(COLUMNS), "dim": len(COLUMNS), "videos": len(raw),
               "frames": int(sum(len(x) for x in raw.values())),
               "mean": [round(float(v), 6) for v in mean], "std": [round(float(v), 6) for v in std]}
    write_json(out / "_summary.json", summary)
    return summary


def latent_and_labels(index: pd.DataFrame, truth: str | Path, video: str) -> tuple[np.ndarray, np.ndarray]:
    """(latent at label time (n, 2), labels (n, 2)) of one twin video: the latent ``lag`` frames
    before each label (the first ``lag`` frames repeat the first latent), and the labels from the
    annotation file of the index (the truth file's copy for a video without one)."""
    from mambava.data.affwild2 import read_annotation

    t = load_truth(Path(truth) / f"{video}.npz")
    lat, lag = np.asarray(t["latent"], dtype=np.float64), int(t["lag_frames"])
    at_label_time = lat[np.clip(np.arange(len(lat)) - lag, 0, len(lat) - 1)]
    ann = index.set_index("video").at[video, "annotation"]
    labels = read_annotation(ann) if isinstance(ann, str) and ann else np.asarray(t["labels"])
    return at_label_time, labels


def run(cfg) -> dict:
    """The ``oracle_features`` stage: the store in ``ladder.oracle_dir`` (twin only; with real data it
    writes only a note saying why it was skipped)."""
    from mambava.data.affwild2 import load_index

    out = Path(cfg.ladder.oracle_dir)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.data.source != "synthetic":
        why = f"skipped: oracle features need the twin's ground truth; data.source is {cfg.data.source}"
        log.warning("oracle features %s", why)
        write_json(out / "_summary.json", {"skipped": why})
        return {"skipped": why}
    summary = build_oracle_store(load_index(cfg.data.index), truth_dir(cfg), out)
    log.info("oracle features: %d videos, %d frames, %d columns in %s", summary["videos"], summary["frames"],
             summary["dim"], out)
    return summary
