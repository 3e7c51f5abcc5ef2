"""``mambava predict``: valence and arousal of every frame of a video of your own.

    raw video -> crops (mambava.video.crop) -> features (the ``features`` stage's own
    extraction, with the fine-tuned encoder) -> the temporal model (the ``evaluate`` stage's
    inference) -> <out>/<video>.csv, <video>.png [, <video>.mp4]

The input is a video file or an already cropped folder (``<folder>/00001.jpg ...``, the official
layout). The model is a pipeline run (``--variant V --fold K`` of params.yaml: the fine-tuned
encoder of ``mae_finetune.out`` and ``<train.out>/V/foldK/best.pt``) or a bundle written by
``mambava export`` (``--model DIR``, :mod:`mambava.export`). Because features and inference are
the pipeline's own functions (:func:`mambava.features.extract.extract_features`,
:func:`mambava.inference.predict_video`), a twin video's cropped folder gets exactly the
predictions that ``evaluate`` wrote for it.

``<video>.csv`` has one row per frame (and per face with ``--faces 2``): ``frame`` (1-based),
``time_s``, ``face`` (1; 1 = left and 2 = right with two faces), ``valence``, ``arousal``, the
last two empty where no face was found (never an invented value; the model itself sees the
previous face's features there, as in training). ``<video>.png`` plots both over time;
``--overlay`` also writes ``<video>.mp4`` with the face's crop square and the two values drawn on
every frame.

**Streaming** (``--stream``): one frame at a time, latency one frame, from a file or a camera:
:class:`StreamingVA` carries each Mamba layer's recurrent state (``Mamba.step``) and, for each
TCN level, a rolling buffer of the past inputs its causal convolutions need, so its outputs
equal the whole-video pass (tests: max abs difference <= 1e-5 in float32).

The package, one module per concern: :mod:`.predictor` (the model), :mod:`.tables` (the CSV
table and its plot), :mod:`.batch` (whole inputs), :mod:`.stream_state` (a stream's state) and
:mod:`.stream_loop` (the stream loop); drawing and writing video is :mod:`mambava.video.overlay`.
"""

from mambava.predict.batch import run
from mambava.predict.predictor import Predictor, check_widths, from_run
from mambava.predict.stream_loop import run_stream, stream
from mambava.predict.stream_state import FaceStream, StreamingVA, encode_crop
from mambava.predict.tables import (
    COLUMNS,
    DECIMALS,
    plot,
    predict_folder_table,
    predict_video_table,
    write_table,
)

__all__ = ["COLUMNS", "DECIMALS", "FaceStream", "Predictor", "StreamingVA", "check_widths", "encode_crop", "from_run",
           "plot", "predict_folder_table", "predict_video_table", "run", "run_stream", "stream", "write_table"]
