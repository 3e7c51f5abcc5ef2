"""The typed view of ``params.yaml``: the one place where settings live.

``params.yaml`` holds the CPU default profile at its top level and, under ``profiles:``, partial
overlays (``profiles.paper`` is the paper's sizes for a GPU and real Aff-Wild2). The key
``profile:`` picks the overlay that is deep-merged over the defaults, so switching is one setting
that ``dvc params diff`` shows::

    dvc exp run -S profile=paper

Every section is a pydantic model that forbids unknown keys and checks types, so a typo such as
``train.lerning_rate`` stops the run with the file, the line and the key instead of being ignored
(the authors' published config crashed on exactly such a typo, far from where it was made).
The sections are defined in :mod:`mambava.config_sections`; import them from here, with
:func:`load_config` and the root :class:`Config`.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from mambava.checks import InputError
from mambava.config_sections import (  # noqa: F401  (re-exported: `from mambava.config import X` for every section)
    FACE_MEAN,
    FACE_STD,
    BookConfig,
    CropConfig,
    DataConfig,
    EncoderConfig,
    EvaluateConfig,
    FacePretrainConfig,
    FaceProbeConfig,
    FeaturesConfig,
    FoldsConfig,
    LadderConfig,
    MaeFinetuneConfig,
    MaePretrainConfig,
    ModelConfig,
    PopulationConfig,
    Section,
    SyntheticConfig,
    TrainConfig,
)
from mambava.variants import VARIANTS  # the one list of variants; params.yaml's `variants:` is checked against it

DEFAULT_PARAMS = Path("params.yaml")


class ConfigError(InputError):
    """A problem in params.yaml, with the file, line and key that caused it."""


# --------------------------------------------------------------------------- root
class Config(Section):
    profile: str = "default"
    # clean: the encoder is fine-tuned on videos that never validate or test a model (folds.encoder_fraction);
    # paper: on every official training video, and folds 1-5 validate on them too (the authors' protocol)
    protocol: Literal["clean", "paper"] = "clean"
    # the variants the pipeline trains (dvc.yaml's train/evaluate matrices read this list)
    variants: list[str] = Field(default_factory=lambda: list(VARIANTS), min_length=1)
    seed: int = 42
    device: Literal["auto", "cpu", "cuda"] = "auto"
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    face_pretrain: FacePretrainConfig = FacePretrainConfig()
    mae_pretrain: MaePretrainConfig = MaePretrainConfig()
    mae_finetune: MaeFinetuneConfig = MaeFinetuneConfig()
    features: FeaturesConfig = FeaturesConfig()
    face_probe: FaceProbeConfig = FaceProbeConfig()
    folds: FoldsConfig = FoldsConfig()
    train: TrainConfig = TrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    ladder: LadderConfig = LadderConfig()
    crop: CropConfig = CropConfig()
    book: BookConfig = BookConfig()
    profiles: dict[str, dict[str, Any]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check_variants(self) -> "Config":
        unknown = [v for v in self.variants if v not in VARIANTS]
        if unknown:
            raise ValueError(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
        return self


# --------------------------------------------------------------------------- loading
def _deep_merge(base: dict, overlay: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _line_map(text: str) -> dict[tuple, int]:
    """Map each key path in a YAML document to its 1-based line number."""
    lines: dict[tuple, int] = {}

    def walk(node: yaml.Node, path: tuple) -> None:
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                key_path = path + (key_node.value,)
                lines[key_path] = key_node.start_mark.line + 1
                walk(value_node, key_path)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                lines[path + (i,)] = item.start_mark.line + 1
                walk(item, path + (i,))

    root = yaml.compose(text)
    if root is not None:
        walk(root, ())
    return lines


def _format_errors(err: ValidationError, path: Path, lines: dict[tuple, int], prefix: tuple) -> str:
    msgs = []
    for e in err.errors():
        loc = prefix + tuple(e["loc"])
        # The deepest location that exists in the file tells the line.
        line = None
        for n in range(len(loc), 0, -1):
            if loc[:n] in lines:
                line = lines[loc[:n]]
                break
        where = f"{path}:{line}" if line else str(path)
        key = ".".join(str(p) for p in loc)
        if e["type"] == "extra_forbidden":
            what = "unknown key (typo?)"
        else:
            what = e["msg"]
            if "input" in e and not isinstance(e["input"], dict):
                what += f" (got {e['input']!r})"
        msgs.append(f"{where}: {key}: {what}")
    return "\n".join(msgs)


def load_config(path: str | Path = DEFAULT_PARAMS, profile: str | None = None) -> Config:
    """Read params.yaml, apply the selected profile overlay and validate everything.

    ``profile`` overrides the file's ``profile:`` key. Raises ConfigError naming file, line and
    key for every problem found.
    """
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: parameters file not found (run from the repository root)")
    text = path.read_text()
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}:1: the top level must be a mapping of sections")
    duplicates = _duplicate_keys(text)
    if duplicates:
        raise ConfigError("invalid parameters:\n" + "\n".join(f"{path}:{m}" for m in duplicates))
    lines = _line_map(text)

    # Validate the defaults alone first, so an error names the right place in the file.
    try:
        _check_settings(Config.model_validate(raw), path, lines, ())
    except ValidationError as exc:
        raise ConfigError("invalid parameters:\n" + _format_errors(exc, path, lines, ())) from None

    profiles = raw.get("profiles") or {}
    name = profile if profile is not None else raw.get("profile", "default")
    if name != "default" and name not in profiles:
        known = ", ".join(["default", *profiles]) or "default"
        raise ConfigError(f"{path}:{lines.get(('profile',), 1)}: unknown profile {name!r} (known: {known})")
    # Every overlay must be valid even when not selected, so a typo in `paper` is caught on CPU.
    for pname, overlay in profiles.items():
        merged = _deep_merge(raw, overlay or {})
        merged["profile"] = pname
        try:
            _check_settings(Config.model_validate(merged), path, lines, ("profiles", pname), pname)
        except ValidationError as exc:
            raise ConfigError(
                f"invalid parameters in profile {pname!r}:\n"
                + _format_errors(exc, path, lines, ("profiles", pname))
            ) from None
    effective = _deep_merge(raw, profiles.get(name) or {}) if name != "default" else raw
    effective = dict(effective, profile=name)
    return Config.model_validate(effective)


# --------------------------------------------------------------------------- checks across keys
def settings_problems(cfg: Config) -> list[tuple[list[tuple], str]]:
    """Settings that are each valid but cannot work together: (key paths involved, message)."""
    out: list[tuple[list[tuple], str]] = []
    m, enc = cfg.model, cfg.mae_pretrain.encoder
    if m.input_dim != enc.embed_dim:
        out.append(([("model", "input_dim"), ("mae_pretrain", "encoder", "embed_dim")],
                    f"model.input_dim ({m.input_dim}) must equal mae_pretrain.encoder.embed_dim ({enc.embed_dim}), "
                    "the width of the features the temporal model reads"))
    if enc.arch != "vit" and cfg.mae_pretrain.steps > 0:
        out.append(([("mae_pretrain", "steps"), ("mae_pretrain", "encoder", "arch")],
                    f"mae_pretrain.steps ({cfg.mae_pretrain.steps}): masked-autoencoder pretraining on the study's "
                    f"frames needs arch vit; with arch {enc.arch} set steps: 0 and start from a checkpoint "
                    "(`mambava pretrain-faces` makes one)"))
    for w, st in (("window", "stride"), ("window_fold0", "stride_fold0")):
        if getattr(cfg.train, st) > getattr(cfg.train, w):
            out.append(([("train", st), ("train", w)],
                        f"train.{st} ({getattr(cfg.train, st)}) is longer than train.{w} ({getattr(cfg.train, w)}): "
                        "the frames between windows would never be trained on"))
    if cfg.evaluate.stride > cfg.evaluate.window:
        out.append(([("evaluate", "stride"), ("evaluate", "window")],
                    f"evaluate.stride ({cfg.evaluate.stride}) is longer than evaluate.window ({cfg.evaluate.window}): "
                    "the frames between windows would get no prediction"))
    if cfg.device == "cpu" and m.scan_backend == "cuda":
        out.append(([("model", "scan_backend"), ("device",)],
                    "model.scan_backend: cuda (mamba-ssm's kernel) cannot run with device: cpu (use auto)"))
    for key in ("variant", "reference"):
        value = getattr(cfg.book, key)
        if value not in VARIANTS:
            out.append(([("book", key)], f"book.{key}: unknown variant {value!r} (one of {', '.join(VARIANTS)})"))
    return out


def _check_settings(cfg: Config, path: Path, lines: dict[tuple, int], prefix: tuple, profile: str | None = None) -> Config:
    """Raise ConfigError for :func:`settings_problems`, each at the line of the first key
    involved that the profile overlay (``prefix``) sets, else at its line among the defaults."""
    msgs = []
    for keys, what in settings_problems(cfg):
        line = next((lines[prefix + k] for k in keys if prefix and prefix + k in lines), None)
        if line is None:
            line = next((lines[k] for k in keys if k in lines), None)
        where = f"{path}:{line}" if line else str(path)
        msgs.append(f"{where}: {what}" + (f" (in profile {profile!r})" if profile else ""))
    if msgs:
        raise ConfigError("invalid parameters:\n" + "\n".join(msgs))
    return cfg


def _duplicate_keys(text: str) -> list[str]:
    """``LINE: key: duplicate key`` for every key repeated in one mapping (YAML loaders keep the
    last silently, so a setting written twice would be half-ignored)."""
    out: list[str] = []

    def walk(node: yaml.Node, keys: tuple) -> None:
        if isinstance(node, yaml.MappingNode):
            seen: dict[str, int] = {}
            for key_node, value_node in node.value:
                line = key_node.start_mark.line + 1
                dotted = ".".join(map(str, keys + (key_node.value,)))
                if key_node.value in seen:
                    out.append(f"{line}: {dotted}: duplicate key (first set at line {seen[key_node.value]}; "
                               "only one would be used)")
                else:
                    seen[key_node.value] = line
                walk(value_node, keys + (key_node.value,))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                walk(item, keys + (i,))

    root = yaml.compose(text)
    if root is not None:
        walk(root, ())
    return out
