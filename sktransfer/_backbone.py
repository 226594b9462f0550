"""Everything that touches timm: create a backbone, load its weights, read its preprocessing,
group its blocks, split its forward pass and run it.

No other module of sktransfer imports timm.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from numbers import Integral, Real
from pathlib import Path
from typing import ClassVar

import timm
import timm.data
import timm.utils
import torch
from timm.models import group_parameters
from torch import nn

from . import _hub
from ._options import POOLINGS, PREPROCESSING_PRESETS
from ._params import did_you_mean
from ._preprocess import Preprocess
from ._warnings import UnstatedPreprocessingWarning, warn

WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".ckpt")
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos")
CROP_MODES = ("center", "squash", "border")
TIMM_VERSION = timm.__version__


# ---------------------------------------------------------------------------- creation


def check_model_name(name: str) -> None:
    """Raise a helpful ``ValueError`` when ``name`` is not a timm model."""
    if name.startswith(("hf-hub:", "hf_hub:", "local-dir:")):
        return
    if timm.is_model(name):
        return
    arch = timm.models.split_model_name_tag(name)[0]
    candidates = timm.list_models() + timm.list_pretrained()
    close = difflib.get_close_matches(name, candidates, n=5, cutoff=0.6)
    close = close or difflib.get_close_matches(arch, timm.list_models(), n=5, cutoff=0.6)
    hint = f" Did you mean one of {close}?" if close else ""
    raise ValueError(
        f"model={name!r} is not a timm model name.{hint} "
        "See timm.list_models() for architectures and timm.list_pretrained() for "
        "architectures with their pretrained tags."
    )


def create_backbone(
    name: str,
    weights="pretrained",
    *,
    pooling: str | None = None,
    image_size=None,
    drop_rate: float | None = None,
    seed: int = 0,
    preprocessing=None,
) -> nn.Module:
    """Create a timm model with its original head and load ``weights`` into it.

    Parameters
    ----------
    name : str
        A timm model name, with or without a pretrained tag.
    weights : {"pretrained"}, None, path-like or mapping
        ``"pretrained"`` loads timm's weights through the Hugging Face hub and its local
        cache (``HF_HUB_OFFLINE=1`` is honoured); ``None`` keeps the random initialisation;
        a path loads a local checkpoint (see ``load_weights_file``); a mapping of
        names to tensors (another model's state dict) loads the same way.
    pooling : str, default=None
        Global pooling of the model's head; ``None`` keeps the model's own.
    image_size : int or (int, int), default=None
        Input size, passed to architectures with a fixed input size (vision transformers).
    drop_rate : float, default=None
        Dropout before the classifier.
    seed : int, default=0
        Seed of the random initialisation, so that ``weights=None`` gives the same
        weights at every fit (the global torch RNG is left untouched).
    preprocessing : dict, str or None, default=None
        The preprocessing the caller states for ``weights`` (see ``data_config``).
        Weights loaded by tensor order while it is None warn
        ([`UnstatedPreprocessingWarning`][sktransfer.UnstatedPreprocessingWarning]).

    Returns
    -------
    model : torch.nn.Module
        The model, in eval mode, on the CPU.
    """
    check_model_name(name)
    kwargs = {}
    if pooling is not None:
        kwargs["global_pool"] = pooling
    if drop_rate is not None:
        kwargs["drop_rate"] = drop_rate
    if image_size is not None and _has_fixed_input_size(name):
        kwargs["img_size"] = _as_hw(image_size)

    pretrained = isinstance(weights, str) and weights == "pretrained"
    unreachable = _hub_unreachable(name) if pretrained else None
    try:
        with torch.random.fork_rng(devices=[]), _offline_if(unreachable):
            torch.manual_seed(seed)
            model = timm.create_model(name, pretrained=pretrained, **kwargs)
    except (AssertionError, TypeError, NotImplementedError) as exc:
        if "global_pool" in kwargs:
            raise ValueError(
                f"pooling={pooling!r} is not supported by model {name!r} ({exc}). "
                f"Choose one of {POOLINGS} that the model supports, or pooling=None for "
                "the model's own pooling."
            ) from exc
        raise
    except (OSError, RuntimeError) as exc:
        if not pretrained:
            raise
        raise _hub.PretrainedWeightsError(_hub.failure_message(name, exc, unreachable)) from exc
    matched = "name"
    if isinstance(weights, Mapping):  # the weights of another fitted model
        matched = load_state(model, weights, "The weights given")
    elif weights is not None and not pretrained:
        matched = load_weights_file(model, weights)
    if matched == "order" and preprocessing is None:
        _warn_unstated_preprocessing(model, weights)
    timm_name = name if timm.is_model(name) else model.pretrained_cfg["architecture"]
    model.sktransfer_spec = {"name": timm_name, "kwargs": kwargs}
    return model.eval()


def _hub_unreachable(name: str) -> str | None:
    """Why the Hugging Face hub, where timm downloads ``name``'s weights from, cannot be
    reached; None when it answers, when it is not asked (``HF_HUB_OFFLINE=1``) or when
    the weights come from elsewhere (torch.hub's addresses fail at once, without retries)."""
    if _hub.hub_offline() or name.startswith("local-dir:"):
        return None
    if not name.startswith(("hf-hub:", "hf_hub:")):
        cfg = timm.models.get_pretrained_cfg(name)
        if cfg is None or not cfg.hf_hub_id:
            return None
    return _hub.unreachable(_hub.hub_endpoint())


def _offline_if(unreachable: str | None):
    return _hub.offline() if unreachable else contextlib.nullcontext()


def _has_fixed_input_size(name: str) -> bool:
    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except (RuntimeError, KeyError, ValueError):
        cfg = None
    return bool(cfg is not None and getattr(cfg, "fixed_input_size", False))


def _as_hw(image_size) -> tuple[int, int]:
    def valid(s):
        return isinstance(s, Integral) and not isinstance(s, bool) and s > 0

    size = (image_size, image_size) if valid(image_size) else tuple(image_size)
    if len(size) != 2 or not all(valid(s) for s in size):
        raise ValueError(
            f"image_size={image_size!r} is not valid: expected a positive int or a "
            "(height, width) pair of positive ints."
        )
    return (int(size[0]), int(size[1]))


# ----------------------------------------------------------------------- local weights


def read_state_dict(path) -> dict[str, torch.Tensor]:
    """Read a checkpoint file: a bare state dict, or one under ``state_dict`` or ``model``."""
    path = Path(os.fspath(path))
    if not path.is_file():
        raise FileNotFoundError(
            f"weights={str(path)!r} is not a file. Expected 'pretrained', None, or the path "
            f"of a local checkpoint ({', '.join(WEIGHT_SUFFIXES)})."
        )
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError as exc:
            raise ImportError(
                f"Reading {str(path)!r} needs the safetensors package: pip install "
                "safetensors, or pass a checkpoint saved with torch.save (.pt, .pth)."
            ) from exc
        try:
            state = load_file(str(path), device="cpu")
        except Exception as exc:
            raise ValueError(
                f"Could not read {str(path)!r} as a safetensors file: {exc}. Expected a "
                "state dict saved with safetensors.torch.save_file (or rename a torch.save "
                "checkpoint to .pt)."
            ) from exc
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ValueError(_unreadable_checkpoint(path, exc)) from exc
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not state:
        raise ValueError(
            f"{str(path)!r} holds no state dict: expected a mapping of parameter names to "
            "tensors, either bare or under 'state_dict' or 'model'."
        )
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module.") :]: v for k, v in tensors.items()}
    return tensors


def _unreadable_checkpoint(path: Path, exc: Exception) -> str:
    """Why ``torch.load(path, weights_only=True)`` failed, and the fix, without torch's
    advice to load with ``weights_only=False`` (which would run the file's code)."""
    reason = str(exc).partition("WeightsUnpickler error:")[2].strip().splitlines()
    if reason and reason[0].startswith("Unsupported global"):
        return (
            f"{str(path)!r} holds Python objects, not only tensors ({reason[0]}). "
            "sktransfer reads weights only, since loading objects runs their code: save "
            "the state dict instead, torch.save(model.state_dict(), path)."
        )
    detail = reason[0] if reason else f"{type(exc).__name__}: {exc}".strip()
    return (
        f"{str(path)!r} is not a PyTorch checkpoint, or it is damaged ({detail}). "
        f"Expected a state dict saved with torch.save or safetensors "
        f"({', '.join(WEIGHT_SUFFIXES)}); check the file, or download it again."
    )


def _warn_unstated_preprocessing(model: nn.Module, weights) -> None:
    cfg = data_config(model)
    origin = f"{os.fspath(weights)!r}" if isinstance(weights, str | os.PathLike) else "weights"
    warn(
        f"The checkpoint {origin} was loaded into {model.pretrained_cfg['architecture']!r} "
        "by tensor order (its key names differ), so nothing says which preprocessing it "
        "was trained with, and the architecture's own is used: mean="
        f"{tuple(cfg['mean'])}, std={tuple(cfg['std'])}, interpolation="
        f"{cfg['interpolation']!r}, crop_pct={cfg['crop_pct']}. Weights ported from "
        "another framework often differ (TensorFlow ports of EfficientNet-Lite use mean = "
        "std = 0.5). State it: preprocessing={'mean': ..., 'std': ...} (timm's data-config "
        "keys) or a preset name (" + ", ".join(map(repr, PREPROCESSING_PRESETS)) + ").",
        UnstatedPreprocessingWarning,
    )


def load_weights_file(model: nn.Module, path) -> str:
    """Load a local checkpoint into ``model``, by name or, failing that, by tensor order.

    Names are tried first. A checkpoint whose classifier has another number of classes
    (a fine-tuned model) resizes the head first. When names differ but every tensor's
    shape matches in order (weights ported from another framework or implementation),
    tensors load by order. Anything else raises, naming how many tensors matched: a model
    never runs silently on random weights. Returns how the tensors matched: ``"name"``
    or ``"order"``.
    """
    return load_state(model, read_state_dict(path), f"The checkpoint {str(path)!r}")


def load_state(model: nn.Module, ckpt: Mapping[str, torch.Tensor], origin: str) -> str:
    """Load a state dict into ``model`` as ``load_weights_file`` does (returning
    ``"name"`` or ``"order"``); ``origin`` names where it came from in the error."""
    own = model.state_dict()
    head_names = _classifier_state_names(model)

    head_shapes = {k: ckpt[k].shape for k in head_names if k in ckpt}
    body_match = all(
        k in ckpt and ckpt[k].shape == v.shape for k, v in own.items() if k not in head_names
    )
    if body_match and head_shapes and any(own[k].shape != s for k, s in head_shapes.items()):
        weight = next(k for k in head_names if k.endswith("weight"))
        model.reset_classifier(int(head_shapes[weight][0]))
        own = model.state_dict()

    by_name = sum(1 for k, v in own.items() if k in ckpt and ckpt[k].shape == v.shape)
    if by_name == len(own) and len(ckpt) == len(own):
        model.load_state_dict(ckpt, strict=True)
        return "name"

    ckpt_items = list(ckpt.items())
    by_order = 0
    for (_, mine), (_, theirs) in zip(own.items(), ckpt_items, strict=False):
        if mine.shape != theirs.shape:
            break
        by_order += 1
    if by_order == len(own) == len(ckpt_items):
        remapped = {k: v for k, (_, v) in zip(own, ckpt_items, strict=True)}
        model.load_state_dict(remapped, strict=True)
        return "order"

    raise ValueError(
        f"{origin} does not fit the architecture "
        f"{type(model).__name__} ({model.pretrained_cfg.get('architecture', '?')}): the model "
        f"has {len(own)} tensors and the weights {len(ckpt)}; {by_name} match by name and "
        f"shape, and the first {by_order} match by order and shape. Check that they come "
        "from the same architecture (and variant) as `model`."
    )


def save_state(model: nn.Module, path) -> None:
    """Save every tensor of ``model`` to ``path``: safetensors for a ``.safetensors``
    suffix, otherwise ``torch.save`` of the state dict (read back by ``weights_only``)."""
    path = Path(os.fspath(path))
    if not path.parent.is_dir():
        raise FileNotFoundError(
            f"Cannot save the weights to {str(path)!r}: the folder {str(path.parent)!r} does "
            "not exist. Create it first (Path(folder).mkdir(parents=True)), or choose "
            "another path."
        )
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import save_file
        except ImportError as exc:
            raise ImportError(
                "Saving .safetensors files needs the safetensors package: pip install "
                "safetensors, or save to a .pt file."
            ) from exc
        save_file(state, str(path))
    elif path.suffix in WEIGHT_SUFFIXES:
        torch.save(state, path)
    else:
        raise ValueError(
            f"Cannot tell the format of {str(path)!r} from its suffix; use one of "
            f"{', '.join(WEIGHT_SUFFIXES)}."
        )


def _classifier_state_names(model: nn.Module) -> set[str]:
    classifier = model.get_classifier()
    ids = {id(t) for t in classifier.state_dict(keep_vars=True).values()}
    return {k for k, v in model.state_dict(keep_vars=True).items() if id(v) in ids}


def weights_fingerprint(model: nn.Module) -> str:
    """A short, stable hash of every tensor of the model (names, shapes and values)."""
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in model.state_dict().items():
        t = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


# ----------------------------------------------------------------- architecture as data


def describe(model: nn.Module) -> dict:
    """What rebuilds ``model`` but its tensors, as plain data: the timm model name, the
    constructor arguments ``create_backbone`` gave and the head's number of outputs."""
    spec = getattr(model, "sktransfer_spec", None)
    if spec is None:
        spec = {"name": model.pretrained_cfg["architecture"], "kwargs": {}}
    kwargs = {k: list(v) if isinstance(v, tuple) else v for k, v in spec["kwargs"].items()}
    return {"name": spec["name"], "kwargs": kwargs, "num_classes": int(model.num_classes)}


def rebuild(description: Mapping, tensors: Mapping[str, torch.Tensor]) -> nn.Module:
    """The model that ``describe`` described, with ``tensors`` loaded strictly, in
    eval mode on the CPU. Raises ``ValueError`` when this timm cannot build it."""
    name, kwargs = description["name"], dict(description["kwargs"])
    if "img_size" in kwargs:
        kwargs["img_size"] = tuple(kwargs["img_size"])
    if not timm.is_model(name):
        raise ValueError(
            f"The saved model is a timm {name!r}, which timm {timm.__version__} does not "
            "have. Install the timm version it was saved with (the file records it)."
        )
    with torch.random.fork_rng(devices=[]):
        model = timm.create_model(
            name, pretrained=False, num_classes=description["num_classes"], **kwargs
        )
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise ValueError(
            f"The saved weights do not fit timm {timm.__version__}'s {name!r}: {exc}. "
            "Install the timm version the model was saved with (the file records it)."
        ) from exc
    model.sktransfer_spec = {"name": name, "kwargs": dict(description["kwargs"])}
    return model.eval()


# ----------------------------------------------------------------------- preprocessing


def data_config(model: nn.Module, image_size=None, preprocessing=None) -> dict:
    """The preprocessing (size, interpolation, crop, mean, std): the model's own, with
    ``image_size`` (an int or ``(height, width)``) as the input size and the values
    ``preprocessing`` states (``stated_preprocessing``) in place of the model's."""
    cfg = dict(timm.data.resolve_model_data_config(model))
    if image_size is not None:
        cfg["input_size"] = (cfg["input_size"][0], *_as_hw(image_size))
    return {**cfg, **stated_preprocessing(preprocessing, cfg["input_size"][0])}


def stated_preprocessing(preprocessing, channels: int) -> dict:
    """``preprocessing`` checked, as timm data-config values: a preset name of
    ``PREPROCESSING_PRESETS``, or a dict of some of ``mean``, ``std`` (one number
    per input channel; std > 0), ``interpolation``, ``crop_pct`` (in (0, 1]) and
    ``crop_mode``. None states nothing. Raises ``ValueError`` naming the bad entry."""
    if preprocessing is None:
        return {}
    if isinstance(preprocessing, str):
        if preprocessing not in PREPROCESSING_PRESETS:
            raise ValueError(
                f"preprocessing={preprocessing!r} is not a preset; use one of "
                f"{sorted(PREPROCESSING_PRESETS)} or a dict of timm data-config values."
            )
        preprocessing = PREPROCESSING_PRESETS[preprocessing]
    checks = {
        "mean": lambda v: _channel_values(v, channels, "mean", positive=False),
        "std": lambda v: _channel_values(v, channels, "std", positive=True),
        "interpolation": lambda v: _one_of(v, INTERPOLATIONS, "interpolation"),
        "crop_pct": _crop_pct,
        "crop_mode": lambda v: _one_of(v, CROP_MODES, "crop_mode"),
    }
    unknown = sorted(set(preprocessing) - set(checks), key=str)
    if unknown:
        raise ValueError(
            f"preprocessing has the unknown key {unknown[0]!r}."
            f"{did_you_mean(unknown[0], checks)} It takes timm's data-config keys: "
            f"{', '.join(checks)} (the input size is image_size)."
        )
    return {key: checks[key](value) for key, value in preprocessing.items()}


def _channel_values(value, channels: int, key: str, *, positive: bool) -> tuple:
    """One number per channel in [0, 1] units (> 0 for a std); a single number is
    repeated. Values in 0-255 units (123.7) are refused, not silently misused."""
    numbers = (value,) * channels if isinstance(value, Real) else value
    try:
        out = tuple(float(v) for v in numbers)
    except (TypeError, ValueError):
        out = ()
    low = 0.0 if not positive else math.ulp(0.0)
    if len(out) != channels or not all(low <= v <= 1 for v in out):
        raise ValueError(
            f"preprocessing[{key!r}]={value!r} is not valid: expected {channels} numbers "
            f"in {'(0, 1]' if positive else '[0, 1]'}, one per input channel, in the units of "
            "pixels scaled to [0, 1] (ImageNet's mean is (0.485, 0.456, 0.406)); values in "
            "0-255 units are divided by 255."
        )
    return out


def _one_of(value, options: tuple, key: str) -> str:
    if value not in options:
        raise ValueError(f"preprocessing[{key!r}]={value!r} is not one of {list(options)}.")
    return value


def _crop_pct(value) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not 0 < value <= 1:
        raise ValueError(
            f"preprocessing['crop_pct']={value!r} is not valid: expected the fraction of "
            "the resized image kept by the centre crop, in (0, 1] (1: no crop)."
        )
    return float(value)


def eval_transform(cfg: dict) -> Callable:
    """PIL image -> normalised tensor, exactly as the model was evaluated: timm's
    evaluation transform, as ``Preprocess`` computes it (equal to the bit, and it takes
    greyscale images before their conversion to RGB, which saves most of the resize)."""
    return EvalTransform(Preprocess.of(cfg))


@dataclass(frozen=True)
class EvalTransform:
    """``Preprocess`` giving a torch tensor."""

    preprocess: Preprocess
    accepts_grey: ClassVar[bool] = True

    def __call__(self, image) -> torch.Tensor:
        return torch.from_numpy(self.preprocess(image))


# Training augmentations by name: timm's auto-augment policy strings on top of a random
# resized crop (70-100 % of the area) and horizontal flips. TrivialAugment is RandAugment
# with one operation, always applied, at a uniformly drawn magnitude ("mstd" > 100).
# Magnitudes are capped at 9 ("mmax9"): at 10, timm's increasing posterize keeps 0 bits,
# which Pillow rejects ("bits must be between or equal to 1 and 8").
AUGMENT_POLICIES = {
    "light": None,
    "randaugment": "rand-m9-mstd0.5-inc1-mmax9",
    "trivialaugment": "rand-n1-m9-mstd101-inc1-mmax9-p1.0",
}


def train_transform(cfg: dict, preset: str = "light") -> Callable:
    """A named training augmentation followed by the model's own normalisation."""
    return timm.data.create_transform(
        **cfg,
        is_training=True,
        scale=(0.7, 1.0),
        hflip=0.5,
        color_jitter=0.0,
        auto_augment=AUGMENT_POLICIES[preset],
    )


def batch_mixer(
    mixup: float, cutmix: float, *, label_smoothing: float, n_classes: int, multilabel: bool
):
    """timm's ``Mixup``: mixes a batch and its one-hot (or multi-hot) targets, smoothed."""
    return timm.data.Mixup(
        mixup_alpha=mixup,
        cutmix_alpha=cutmix,
        label_smoothing=label_smoothing,
        num_classes=n_classes,
        multi_label=multilabel,
    )


def weight_average(model: nn.Module, decay: float):
    """timm's ``ModelEmaV3`` of ``model``, with the decay warming up over the first steps
    (short fine-tunes take hundreds of steps, not millions)."""
    return timm.utils.ModelEmaV3(model, decay=decay, use_warmup=True)


def prefers_channels_last(model: nn.Module) -> bool:
    """Whether the model is a convolutional network, whose convolutions run faster on
    channels-last tensors (measured on CPU; the standard on GPUs). A vision transformer's
    single patch-embedding convolution does not count."""
    return sum(isinstance(m, nn.Conv2d) for m in model.modules()) > 1


# --------------------------------------------------------------------------- inference


def forward_pooled(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Pooled pre-logits features."""
    return model.forward_head(model.forward_features(x), pre_logits=True)


def pooled_width(model: nn.Module) -> int:
    """Width of the pooled pre-logits features (the classifier's input)."""
    return int(getattr(model, "head_hidden_size", None) or model.num_features)


def classify(model: nn.Module, pooled: torch.Tensor) -> torch.Tensor:
    """The head on pooled pre-logits features: ``classify(m, forward_pooled(m, x))`` is
    ``m(x)``."""
    return model.get_classifier()(pooled)


def forward_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x)


def n_blocks(model: nn.Module) -> int:
    """How many feature levels ``forward_intermediates`` can return."""
    info = getattr(model, "feature_info", None)
    if not info:
        raise ValueError(
            f"{type(model).__name__} does not expose intermediate features "
            "(no feature_info / forward_intermediates); use layer=None or 'logits'."
        )
    return len(info)


def forward_blocks(
    model: nn.Module, x: torch.Tensor, indices: Sequence[int], pooling: str
) -> torch.Tensor:
    """Features of the blocks ``indices``, each globally pooled, concatenated."""
    token = pooling == "token"
    kwargs = {"return_prefix_tokens": True} if token else {}
    outs = model.forward_intermediates(
        x, indices=list(indices), intermediates_only=True, stop_early=True, **kwargs
    )
    return torch.cat([_pool(out, pooling) for out in outs], dim=1)


def _pool(out, pooling: str) -> torch.Tensor:
    if pooling == "token":
        _, prefix = out
        return prefix[:, 0]
    dims = (2, 3) if out.ndim == 4 else (1,)
    if pooling == "avg":
        return out.mean(dims)
    if pooling == "max":
        return out.amax(dims)
    return 0.5 * (out.mean(dims) + out.amax(dims))


def has_prefix_tokens(model: nn.Module) -> bool:
    return bool(getattr(model, "num_prefix_tokens", 0))


def imagenet_label_names() -> list[str]:
    """The 1,000 ImageNet-1k class descriptions, in timm's index order."""
    info = timm.data.ImageNetInfo()
    return [info.index_to_description(i) for i in range(1000)]


# ------------------------------------------------------------------- groups & splitting


def block_groups(model: nn.Module) -> list[list[str]]:
    """Parameter names of the backbone's block groups, from the input up; head excluded.

    Groups come from timm's ``group_matcher(coarse=True)`` (stem, each stage, the final
    norm or conv). Models without a matcher fall back to one group per top-level child.
    """
    head_ids = {id(p) for p in model.get_classifier().parameters()}
    names = [n for n, p in model.named_parameters() if id(p) not in head_ids]
    if hasattr(model, "group_matcher"):
        try:
            grouped = group_parameters(model, model.group_matcher(coarse=True))
        except NotImplementedError:
            grouped = None
    else:
        grouped = None
    if grouped is None:
        grouped, order = {}, {}
        for n in names:
            top = n.split(".")[0]
            order.setdefault(top, len(order))
            grouped.setdefault(order[top], []).append(n)
    keep = set(names)
    groups = [[n for n in grouped[k] if n in keep] for k in sorted(grouped)]
    return [g for g in groups if g]


def classifier_names(model: nn.Module) -> list[str]:
    """Names of the classifier's parameters."""
    ids = {id(p) for p in model.get_classifier().parameters()}
    return [n for n, p in model.named_parameters() if id(p) in ids]


def reset_head(model: nn.Module, n_outputs: int) -> None:
    model.reset_classifier(n_outputs)


@dataclass
class _Step:
    name: str
    fn: Callable
    params: frozenset


# Known layouts of forward_features, as sequences of attributes; "x*" expands a sequential
# container into its children. A layout is used only if it reproduces forward_features.
_LAYOUTS = (
    ("conv_stem", "bn1", "blocks*", "conv_head", "bn2"),  # EfficientNet
    ("conv_stem", "bn1", "blocks*"),  # MobileNetV3
    ("conv1", "bn1", "act1", "maxpool", "layer1", "layer2", "layer3", "layer4"),  # ResNet
    ("stem", "stages*", "norm_pre"),  # ConvNeXt
    ("stem", "stages*", "final_conv"),  # RegNet, ByobNet
    ("patch_embed", "_pos_embed", "patch_drop", "norm_pre", "blocks*", "norm"),  # ViT
)


class SplitForward:
    """The forward pass cut in two: ``top(bottom(x)) == model(x)``.

    ``bottom`` runs the frozen lower steps of ``forward_features`` (or, with
    ``head_only``, everything up to the pooled pre-logits features); ``top`` runs the rest
    and the head. Built only for layouts that reproduce the model's output exactly.
    """

    def __init__(self, model: nn.Module, steps: list[_Step], cut: int, head_only: bool):
        self.model = model
        self.steps = steps
        self.cut = cut
        self.head_only = head_only
        # where the cut lies, as part of the cache key of the bottom's output
        self.point = "pooled" if head_only else f"after {steps[cut - 1].name}"

    def bottom(self, x: torch.Tensor) -> torch.Tensor:
        if self.head_only:
            return forward_pooled(self.model, x)
        for step in self.steps[: self.cut]:
            x = step.fn(x)
        return x

    def top(self, x: torch.Tensor) -> torch.Tensor:
        if self.head_only:
            x = nn.functional.dropout(
                x, p=float(getattr(self.model, "drop_rate", 0.0)), training=self.model.training
            )
            return classify(self.model, x)
        return self.model.forward_head(self._features(x))

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled pre-logits features from the output of ``bottom``."""
        if self.head_only:
            return x
        return self.model.forward_head(self._features(x), pre_logits=True)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        for step in self.steps[self.cut :]:
            x = step.fn(x)
        return x


class WholeModel:
    """The trivial split: nothing is frozen below the input, the top is the whole model."""

    point = "input"

    def __init__(self, model: nn.Module):
        self.model = model

    def bottom(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def top(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        return forward_pooled(self.model, x)


def _layout_steps(model: nn.Module, layout) -> list[_Step] | None:
    named = dict(model.named_parameters())
    steps = []
    for attr in layout:
        name = attr.rstrip("*")
        obj = getattr(model, name, None)
        if obj is None:
            return None
        if attr.endswith("*"):
            if not isinstance(obj, nn.Sequential):
                return None
            for i, child in enumerate(obj):
                prefix = f"{name}.{i}."
                params = frozenset(n for n in named if n.startswith(prefix))
                steps.append(_Step(f"{name}.{i}", child, params))
        elif isinstance(obj, nn.Module):
            prefix = f"{name}."
            steps.append(_Step(name, obj, frozenset(n for n in named if n.startswith(prefix))))
        elif callable(obj):
            # A method (ViT's _pos_embed): it may use any top-level parameter.
            steps.append(_Step(name, obj, frozenset(n for n in named if "." not in n)))
        else:
            return None
    return steps


def _sequential_steps(model: nn.Module, input_size) -> list[_Step] | None:
    was_training = model.training
    model.eval()
    try:
        x = torch.randn(2, *input_size, generator=torch.Generator().manual_seed(0))
        x = x.to(next(model.parameters()).device)
        with torch.inference_mode():
            reference = model.forward_features(x)
            for layout in _LAYOUTS:
                steps = _layout_steps(model, layout)
                if steps is None:
                    continue
                out = x
                try:
                    for step in steps:
                        out = step.fn(out)
                except (RuntimeError, TypeError):
                    continue
                if out.shape == reference.shape and torch.allclose(out, reference, atol=1e-5):
                    return steps
        return None
    finally:
        model.train(was_training)


def split_forward(
    model: nn.Module, frozen: set[str], input_size, *, head_only: bool
) -> SplitForward | WholeModel:
    """Cut the model after its longest prefix of steps whose parameters are all ``frozen``.

    With ``head_only``, the cut is just before the classifier (pre-logits features).
    When the layout is unknown or nothing can be cut off, the split is the whole model
    (its input, the preprocessed images, can still be computed once).
    """
    if head_only:
        return SplitForward(model, [], cut=0, head_only=True)
    steps = _sequential_steps(model, input_size)
    if steps is None:
        return WholeModel(model)
    cut = 0
    while cut < len(steps) and steps[cut].params <= frozen:
        cut += 1
    if cut == 0:
        return WholeModel(model)
    return SplitForward(model, steps, cut=cut, head_only=False)
