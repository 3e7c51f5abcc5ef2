"""The sections of ``params.yaml``, one pydantic model each (the typed layer of :mod:`mambava.config`,
which assembles them into :class:`mambava.config.Config` and loads the file; import them from there).

Every section forbids unknown keys and checks types strictly, and its defaults are the CPU profile.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# A count of worker processes: a number, or ``auto`` = the cores this process may use
# (mambava.runtime.resolve_workers). Results do not depend on it.
Workers = Annotated[int, Field(ge=1)] | Literal["auto"]
LoaderWorkers = Annotated[int, Field(ge=0)] | Literal["auto"]


class Section(BaseModel):
    """Base of every section: unknown keys are errors, values are checked strictly."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


# --------------------------------------------------------------------------- data
class SyntheticConfig(Section):
    """Size and difficulty of the synthetic Aff-Wild2 twin (see mambava.data.synthetic)."""

    seed: int = 20250313
    n_videos: int = Field(48, ge=3)  # people; two-person videos count twice
    n_pairs: int = Field(3, ge=0)  # of which this many are `<name>_left`/`<name>_right` pairs
    min_frames: int = Field(300, ge=10)
    max_frames: int = Field(3000, ge=10)
    split_fractions: list[float] = [0.6, 0.13, 0.27]  # train, validation, test
    image_size: int = Field(112, ge=32)
    fps: float = Field(30.0, gt=0)
    jpeg_quality: int = Field(90, ge=10, le=100)
    missing_rate: float = Field(0.01, ge=0, lt=1)  # isolated frames with no face found
    missing_runs_per_1k: float = Field(0.5, ge=0)  # runs of 5-90 frames with no face
    unannotated_runs_per_1k: float = Field(0.3, ge=0)  # runs labelled -5
    label_lag_s: float = Field(0.4, ge=0)  # annotators react this late to the face
    workers: Workers = "auto"  # processes drawing videos; the same bytes for any number

    @model_validator(mode="after")
    def _check(self) -> "SyntheticConfig":
        if self.max_frames < self.min_frames:
            raise ValueError("max_frames must be >= min_frames")
        if abs(sum(self.split_fractions) - 1.0) > 1e-6:
            raise ValueError("split_fractions must sum to 1")
        if 2 * self.n_pairs > self.n_videos:
            raise ValueError("n_pairs pairs need 2 * n_pairs videos")
        return self


class DataConfig(Section):
    source: Literal["synthetic", "affwild2"] = "synthetic"
    # The official layout: <root>/cropped_aligned/<video>/00001.jpg and
    # <root>/annotations/VA_Estimation_Challenge/{Train_Set,Validation_Set}/<video>.txt.
    # For `synthetic` the twin is generated here; for `affwild2` point it at your copy.
    root: str = "data/twin/affwild2"
    # Test labels, kept apart from the train/validation annotations (the twin writes them;
    # for real Aff-Wild2 they are not public: set null).
    test_labels: str | None = "data/twin/test_labels"
    # The list of test videos, relative to root (the organisers' file for real data).
    test_list: str = "test_set_release.txt"
    index: str = "data/index.csv"
    synthetic: SyntheticConfig = SyntheticConfig()


# --------------------------------------------------------------------------- model
class ModelConfig(Section):
    """The temporal model (mambava.models.mamba_va.MambaVA); the ablations are settings of it.

    The defaults are the CPU profile: small widths so that training runs in minutes on 2 cores.
    ``profiles.paper`` sets the authors' sizes (67,155,086 parameters for 1024-d features).
    """

    input_dim: int = Field(192, ge=1)  # feature width (the MAE encoder's embed_dim)
    tcn: bool = True  # off: a Linear(input_dim, d_model) replaces the TCN (ablation no_tcn)
    # Output width of each TCN level; level 0 reads input_dim. Paper: 1024, 768, 512, 256.
    tcn_channels: list[int] = Field([128, 96, 64, 64], min_length=1)
    tcn_kernel: int = Field(15, ge=1)  # paper: 15; dilation doubles per level
    temporal: Literal["mamba", "transformer", "none"] = "mamba"
    d_model: int = Field(64, ge=1)  # width of the temporal stack; paper 256 (= last TCN width)
    n_layers: int = Field(2, ge=1)  # paper: 4
    d_state: int = Field(8, ge=1)  # Mamba state size per channel; paper 8
    d_conv: int = Field(4, ge=1)  # Mamba's causal depthwise conv; paper 4
    expand: int = Field(1, ge=1)  # Mamba inner width = expand * d_model; paper 1
    n_heads: int = Field(2, ge=1)  # transformer only; must divide d_model
    causal: bool = True  # transformer only (Mamba is causal by construction)
    # transformer only: each frame attends to the last attention_window frames (0 = all of the past);
    # no position codes, so training windows and whole-video inference see the same context
    attention_window: int = Field(0, ge=0)
    head_hidden: int = Field(32, ge=1)  # paper: 128
    dropout: float = Field(0.3, ge=0, lt=1)  # TCN (and transformer) dropout; paper 0.3
    # Selective scan: auto = mamba-ssm's CUDA kernel on a GPU when installed, numba on a CPU.
    scan_backend: Literal["auto", "cuda", "numba", "reference"] = "auto"

    @model_validator(mode="after")
    def _check(self) -> "ModelConfig":
        if self.temporal == "transformer" and self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        return self


# --------------------------------------------------------------------------- MAE features
FACE_MEAN = (0.471, 0.363, 0.333)  # the authors' face statistics (their MAE fine-tuning code)
FACE_STD = (0.220, 0.193, 0.180)


class EncoderConfig(Section):
    """The frame encoder (timm) and its input: shared by face pretraining, the MAE stage,
    fine-tuning and extraction, so the stages cannot disagree on it. ``arch: vit`` is timm's
    VisionTransformer (the paper's family; depth, num_heads, mlp_ratio); ``arch: resnet`` is a timm
    ResNet of basic blocks (channels, layers; patch_size is the stride of its last feature map)."""

    arch: Literal["vit", "resnet"] = "vit"
    img_size: int = Field(112, ge=16)  # frames are resized to this (the crops are 112x112)
    patch_size: int = Field(16, ge=1)
    embed_dim: int = Field(192, ge=4)  # the feature width (model.input_dim must match)
    depth: int = Field(6, ge=1)
    num_heads: int = Field(3, ge=1)
    mlp_ratio: float = Field(4.0, gt=0)
    channels: list[int] | None = None  # resnet: width of each stage; the last = embed_dim
    layers: list[int] | None = None  # resnet: basic blocks per stage
    # resnet: the last map is averaged over this many horizontal bands, top to bottom, concatenated
    # (1 = global average; 2 = the upper half, eyes and brows, and the lower half, the mouth)
    pool_rows: int = Field(1, ge=1)
    mean: list[float] = Field(default_factory=lambda: list(FACE_MEAN), min_length=3, max_length=3)
    std: list[float] = Field(default_factory=lambda: list(FACE_STD), min_length=3, max_length=3)

    @model_validator(mode="after")
    def _check(self) -> "EncoderConfig":
        if self.img_size % self.patch_size:
            raise ValueError(f"img_size {self.img_size} must be a multiple of patch_size {self.patch_size}")
        if self.arch == "vit" and self.pool_rows != 1:
            raise ValueError("pool_rows is for arch resnet (a ViT's feature is its CLS token)")
        if self.arch == "vit" and self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} must be a multiple of num_heads {self.num_heads}")
        if self.arch == "resnet":
            if not self.channels or not self.layers or len(self.channels) != len(self.layers):
                raise ValueError("arch resnet needs channels and layers, one entry per stage")
            if self.channels[-1] * self.pool_rows != self.embed_dim:
                raise ValueError(f"embed_dim {self.embed_dim} must equal the last stage's width {self.channels[-1]} "
                                 f"x pool_rows {self.pool_rows}")
            if self.pool_rows > self.img_size // self.patch_size:
                raise ValueError(f"pool_rows {self.pool_rows} exceeds the rows of the last map "
                                 f"({self.img_size // self.patch_size})")
            if self.patch_size not in (8, 16, 32):
                raise ValueError(f"arch resnet: patch_size (the output stride) must be 8, 16 or 32, not {self.patch_size}")
        return self


class PopulationConfig(Section):
    """The face-pretraining population (mambava.data.population): people who are not in the study."""

    seed: int = 777  # its own stream tag as well (POPULATION_STREAM): never the study's draws
    n_people: int = Field(3000, ge=2)
    clip_frames: int = Field(12, ge=1)  # frames per person, at random moments of their track
    clip_seconds: float = Field(60.0, gt=0)
    image_size: int = Field(112, ge=16)  # the crops' size
    fps: float = Field(30.0, gt=0)
    jpeg_quality: int = Field(90, ge=10, le=100)


class FacePretrainConfig(Section):
    """``mambava pretrain-faces`` (mambava.features.facepretrain): the encoder of
    ``mae_pretrain.encoder`` pretrained on the population, once, outside ``dvc repro``; its result
    ships as ``mae_pretrain.checkpoint``."""

    population: PopulationConfig = PopulationConfig()
    objective: Literal["supervised", "masked", "both"] = "both"
    steps: int = Field(3000, ge=1)
    batch_size: int = Field(64, ge=2)
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(0.05, ge=0)
    warmup_steps: int = Field(100, ge=0)
    mask_ratio: float = Field(0.6, gt=0, lt=1)
    augment: Literal["none", "flip", "colour"] = "flip"  # colour: flips + channel order, gains, grey
    seed: int = 0
    save_every: int = Field(100, ge=1)  # steps between resumable states (<out>/last.pt)
    threads: int | None = Field(None, ge=1)  # torch threads; null = the cores this process may use
    workers: int | None = Field(None, ge=1)  # processes rendering the population; null = the cores
    cache: str = "outputs/face_pretrain/population.npz"
    out: str = "outputs/face_pretrain"


class MaePretrainConfig(Section):
    """Masked-autoencoder pretraining on the training frames (mambava.features.pretrain)."""

    encoder: EncoderConfig = EncoderConfig()
    # Start from this local checkpoint (facebookresearch/mae `{"model": ...}` or timm's MAE ViT
    # weights, .pth/.pt/.bin/.safetensors) instead of random weights; null = from scratch.
    checkpoint: str | None = None
    checkpoint_sha256: str | None = None  # if set, the checkpoint file must have this SHA-256
    steps: int = Field(250, ge=0)  # 0 with a checkpoint: use its weights as they are
    batch_size: int = Field(48, ge=1)
    lr: float = Field(1.5e-3, gt=0)
    weight_decay: float = Field(0.05, ge=0)
    warmup_steps: int = Field(25, ge=0)
    mask_ratio: float = Field(0.75, gt=0, lt=1)
    norm_pix_loss: bool = True  # per-patch normalised pixel targets (MAE's better setting)
    decoder_dim: int = Field(128, ge=4)
    decoder_depth: int = Field(2, ge=1)
    decoder_heads: int = Field(4, ge=1)
    n_reconstructions: int = Field(8, ge=0)  # held-out (validation) frames drawn for the book
    num_workers: LoaderWorkers = 2  # image-decoding processes (DataLoader; the masks and flips they draw follow them)
    out: str = "outputs/mae_pretrain"


class FaceProbeConfig(Section):
    """The `face_probe` stage (twin only; mambava.features.probe): does the frozen encoder read the
    drawn mouth curve, brow tilt and eye opening of people it never saw?"""

    out: str = "outputs/face_probe"


class MaeFinetuneConfig(Section):
    """Frame-level valence/arousal fine-tuning of the encoder (mambava.features.finetune)."""

    freeze_blocks: int = Field(4, ge=0)  # patch embedding + the first k blocks are frozen
    loss: Literal["mse", "ccc"] = "mse"
    # absolute: the labels (the authors); within_video: each video's labels minus its mean, so that
    # identity (who is in the frame) explains nothing and the encoder learns expression
    target: Literal["absolute", "within_video"] = "within_video"
    colour_augment: bool = True  # random channel order/gains/grey: shapes, not skin or background
    steps: int = Field(200, ge=0)
    batch_size: int = Field(48, ge=1)
    lr: float = Field(5e-4, gt=0)
    weight_decay: float = Field(0.05, ge=0)
    warmup_steps: int = Field(20, ge=0)
    val_max_frames: int | None = Field(None, ge=1)  # evenly spaced subset of validation; null = all
    num_workers: LoaderWorkers = 2  # image-decoding processes (DataLoader; the augmentation's draws follow them)
    out: str = "outputs/mae_finetune"


class FeaturesConfig(Section):
    """Per-video CLS features of every frame (mambava.features.extract)."""

    dir: str = "outputs/features"
    batch_size: int = Field(256, ge=1)
    num_workers: LoaderWorkers = "auto"  # image-decoding processes (DataLoader); the same arrays for any number
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16 autocast on CUDA only


# --------------------------------------------------------------------------- raw video
class CropConfig(Section):
    """Face crops from raw video (``mambava data crop``, ``mambava predict``; mambava.video).

    The geometry must match the crops the encoder was trained on: the twin's faces have their
    eyes 0.20 of the crop apart at 0.49 of its height; Aff-Wild2's 112x112 crops follow the
    five-point template of ArcFace (eyes 0.315 apart at 0.46), the paper profile's values.
    """

    size: int = Field(112, ge=16)  # crop side in pixels (the official crops: 112)
    eye_distance: float = Field(0.20, gt=0, lt=1)  # eye distance / crop side
    eye_y: float = Field(0.49, gt=0, lt=1)  # height of the eye line / crop side
    max_gap_s: float = Field(0.5, ge=0)  # detector misses bridged by tracking, at most this long
    smooth_min_cutoff: float = Field(1.0, gt=0)  # One Euro filter: Hz at rest (lower: steadier)
    smooth_beta: float = Field(1.5, ge=0)  # One Euro filter: how fast it follows motion
    work_size: int = Field(360, ge=64)  # frames scaled to this shorter side for detection
    min_face: float = Field(0.12, gt=0, lt=1)  # smallest face / shorter side
    jpeg_quality: int = Field(90, ge=10, le=100)
    workers: int | None = Field(None, ge=1)  # videos in parallel; null = all cores
    fps: float = Field(30.0, gt=0)  # frame rate of an already cropped folder (for time_s)


# --------------------------------------------------------------------------- book
class BookConfig(Section):
    """The book's notebooks (notebooks/*.ipynb, executed by papermill into book/notebooks/).

    Each value reaches its notebook as ``papermill -p``, so changing one reruns that notebook and
    the book only. Not part of the profiles: the book reads whatever the pipeline produced.
    """

    variant: str = "mamba_va"  # the model of Tables 1 and 2, Long sequences and Predictions
    reference: str = "mamba_va"  # Ablations: paired differences are taken against this variant
    n_boot: int = Field(1000, ge=10)  # video-level bootstrap resamples for intervals the book computes
    sweep_steps: int = Field(7, ge=2)  # Data: faces along each valence / arousal sweep
    projection_points: int = Field(3000, ge=10)  # Features: frames drawn for the 2-D projection
    prediction_fold: int = Field(0, ge=0)  # Predictions: whose validation videos are plotted
    submission_fold: int = Field(0, ge=0)  # Table 2: the fold whose model (primary seed) made the test submission
    seed: int = 0  # the book's own draws (bootstrap resamples, sampled frames)


# --------------------------------------------------------------------------- folds, train, evaluate
class LadderConfig(Section):
    """The signal ladder (twin only): the label ceiling, oracle features, face-encoder features."""

    oracle_dir: str = "outputs/oracle_features"  # the twin's rendered parameters as a feature store
    out: str = "outputs/ladder"  # ladder.csv, ladder.json, ladder.png
    figure: str = "docs/figures/ladder.png"  # a copy of ladder.png for README and the book's landing page (in git)


class FoldsConfig(Section):
    """Fold 0 = the official split; folds 1..n_splits = grouped CV (mambava.data.windows)."""

    n_splits: int = Field(5, ge=2)
    seed: int = 42  # shuffles the groups before the frame-balanced assignment (and draws the encoder videos)
    # protocol clean: this fraction of the official training groups fine-tunes the encoder; those
    # videos always train and never validate, so no scored video's labels reach its features
    encoder_fraction: float = Field(0.5, gt=0, le=1)
    file: str = "outputs/folds.csv"


class TrainConfig(Section):
    """Training of the temporal model on windows of features (mambava.train).

    The learning rate rises linearly for ``warmup_epochs``, then follows cosine annealing with
    warm restarts (period ``restart_epochs``, multiplied by ``restart_mult`` after each restart),
    stepped every batch. ``model.dropout`` is the dropout.
    """

    seed: int = 42  # weights, data order (a function of seed and epoch) and dropout
    epochs: int = Field(3, ge=1)  # paper: 50
    warmup_epochs: int = Field(1, ge=0)  # paper: 5
    restart_epochs: int = Field(2, ge=1)  # first cosine period after warm-up
    restart_mult: int = Field(1, ge=1)
    lr: float = Field(1e-3, gt=0)  # paper: 3e-4
    min_lr: float = Field(0.0, ge=0)
    weight_decay: float = Field(1e-3, ge=0)
    batch_size: int = Field(16, ge=1)
    window: int = Field(128, ge=1)  # folds 1-5 (paper: 300/200)
    stride: int = Field(128, ge=1)
    window_fold0: int = Field(256, ge=1)  # fold 0 (paper: 1000/800)
    stride_fold0: int = Field(256, ge=1)
    last_window: Literal["pad", "drop", "shift"] = "pad"  # see mambava.data.windows
    evals_per_epoch: int = Field(2, ge=1)  # paper: 4
    grad_clip: float = Field(1.0, gt=0)
    threads: int | None = Field(1, ge=1)  # torch and numba CPU threads; null = their defaults
    seeds: int = Field(3, ge=1)  # seeds per (variant, fold): seed, seed + 1, ...; the first is the primary
    workers: Workers = "auto"  # runs of one stage trained at once (forked processes; the same bytes for any number)
    out: str = "outputs/models"  # <out>/<level>/<variant>/fold<k>/seed<s>/


class EvaluateConfig(Section):
    """Inference and scoring (mambava.evaluate); the in-training validation uses it too."""

    inference: Literal["whole", "windows"] = "whole"  # one pass per video, or windows below
    window: int = Field(500, ge=1)  # the authors' test inference: 500/500
    stride: int = Field(500, ge=1)
    sweep: list[int] = [50, 200, 1000]  # window_sweep.csv: non-overlapping window lengths
    n_boot: int = Field(200, ge=0)  # video-level bootstrap resamples (0 = no intervals)
    boot_seed: int = 0
    level: float = Field(0.95, gt=0, lt=1)
    out: str = "outputs/runs"  # <out>/<level>/<variant>/fold<k>/ (primary seed), .../fold<k>/seed<s>/
