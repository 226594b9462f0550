"""Class activation maps: where in each image a fitted model looks for a class.

The methods are pytorch-grad-cam's (``pip install sktransfer[inspection]``), imported only
when a map is computed. This module turns an estimator into the one network its
predictions come from (``network_of``), picks the layer to explain (``_target_layer``),
resolves the user's ``target`` against the estimator's outputs (``Outputs``) and maps
each map from the model's input back onto the pixels of the image it was given
(``_geometry``): the resize and the centre crop undone, 0 outside the crop.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import is_classifier
from sklearn.pipeline import Pipeline
from sklearn.utils.validation import check_is_fitted
from torch import nn

from . import _backbone
from ._images import as_images
from ._params import did_you_mean
from ._preprocess import Preprocess

_SHOWN_LABELS = 20  # an unknown target lists at most these many of the model's labels


@dataclass(frozen=True)
class CamMethod:
    """One of pytorch-grad-cam's methods, by the name users pass as ``method``."""

    name: str
    cam_class: str  # its class in pytorch_grad_cam
    class_specific: bool  # False: the same map whatever the target (EigenCAM)
    uses_gradients: bool

    def build(self, network: nn.Module, layer: nn.Module, reshape, tokens: bool):
        pytorch_grad_cam = import_grad_cam()
        cam_class = getattr(pytorch_grad_cam, self.cam_class)
        kwargs = {"reshape_transform": reshape}
        if self.name == "ablationcam" and tokens:
            kwargs["ablation_layer"] = pytorch_grad_cam.AblationLayerVit()
        return cam_class(network, [layer], **kwargs)


METHODS = {
    m.name: m
    for m in (
        CamMethod("gradcam", "GradCAM", class_specific=True, uses_gradients=True),
        CamMethod("gradcam++", "GradCAMPlusPlus", class_specific=True, uses_gradients=True),
        CamMethod("layercam", "LayerCAM", class_specific=True, uses_gradients=True),
        CamMethod("scorecam", "ScoreCAM", class_specific=True, uses_gradients=False),
        CamMethod("ablationcam", "AblationCAM", class_specific=True, uses_gradients=False),
        CamMethod("eigencam", "EigenCAM", class_specific=False, uses_gradients=False),
    )
}


@dataclass
class Explanation:
    """What ``explain`` computed: per image, its map, the target it explains and the
    model's score for that target (a probability; a predicted value for regressors), and
    the decoded images (RGB PIL images) when they were asked for."""

    maps: list[np.ndarray]
    targets: list
    scores: np.ndarray
    images: list | None = None


def class_activation_maps(estimator, X, *, target=None, method="gradcam", layer="auto"):
    """Where a fitted model looks in each image: one class activation map per image.

    Each map lies on the pixels of the image as it was passed: the model's resize and
    centre crop are undone, and the parts of the image the crop cut off are 0. Overlay
    it on the image with [`overlay`][sktransfer.inspection.overlay].

    Needs pytorch-grad-cam: ``pip install sktransfer[inspection]``.

    Parameters
    ----------
    estimator : fitted estimator
        A [`FineTunedClassifier`][sktransfer.FineTunedClassifier], a
        [`FineTunedRegressor`][sktransfer.FineTunedRegressor], a
        [`PretrainedFeatureExtractor`][sktransfer.PretrainedFeatureExtractor] with
        ``layer="logits"`` (an ImageNet classifier as it is), a ``Pipeline`` whose first
        step is a ``PretrainedFeatureExtractor``, whose middle steps are
        ``StandardScaler`` or ``PCA`` and whose last step is a linear classifier (a probe:
        the steps after the extractor are folded into the network as its head, so the
        gradient reaches the backbone), or a fitted search over one of them (its
        ``best_estimator_``).
    X : images
        Any input the estimator accepts (file paths, arrays, PIL images, bytes).
    target : label, sequence of labels or None, default=None
        What to explain: a class label of ``classes_`` (for an extractor, an ImageNet
        class index; for a regressor, an output index), the same for every image; or a
        list or 1-D array with one per image. None explains the predicted class (the
        top-1 ImageNet class; a regressor's single output; with ``tta``, the class
        predicted for the image as it is, unflipped). With several label columns
        (multi-task), a pair ``(task, label)``, ``task`` a name of ``task_names_`` or a
        column index, ``label`` None for the predicted one; or a list of such pairs.
    method : str, default="gradcam"
        ``"gradcam"``, ``"gradcam++"``, ``"layercam"`` (gradient-based),
        ``"scorecam"``, ``"ablationcam"`` (gradient-free: one forward pass per channel
        of the layer, slow) or ``"eigencam"`` (gradient-free, and class-agnostic: the
        first principal component of the layer's activations, whatever ``target``).
        The user guide's inspection page reports how faithful each one is on real
        weights, which chose the default.
    layer : str, default="auto"
        The layer whose activations are weighed: a module name of the backbone, as in
        ``estimator.backbone_.named_modules()``. ``"auto"`` takes the last layer with a
        spatial output (convolutional networks: the last feature map before pooling;
        vision transformers: the input of the last block's attention, its patch tokens
        laid out on the model's own patch grid).

    Returns
    -------
    maps : list of ndarray of shape (height, width), dtype float32
        One map per image, in [0, 1], at that image's own height and width.

    Raises
    ------
    ValueError
        For a target the model does not know, a layer that does not exist (the message
        lists candidates) or has no spatial output, an unknown method.
    TypeError
        For an estimator that cannot be explained.
    UnreadableImageError
        For an image that does not decode, naming its index (and path).

    Examples
    --------
    >>> import numpy as np
    >>> from sktransfer import PretrainedFeatureExtractor
    >>> from sktransfer.inspection import class_activation_maps
    >>> model = PretrainedFeatureExtractor("test_efficientnet", weights=None,
    ...                                    layer="logits", image_size=64).fit()
    >>> images = np.random.default_rng(0).integers(0, 256, (2, 90, 120, 3), dtype=np.uint8)
    >>> maps = class_activation_maps(model, images, target=3)
    >>> [m.shape for m in maps], bool(maps[0].min() >= 0 and maps[0].max() <= 1)
    ([(90, 120), (90, 120)], True)
    """
    return explain(estimator, X, target=target, method=method, layer=layer).maps


def explain(estimator, X, *, target=None, method="gradcam", layer="auto") -> Explanation:
    """``class_activation_maps``, with the target explained and its score per image."""
    return Explainer(estimator, method=method, layer=layer).explain(X, target)


class Explainer:
    """A fitted estimator made ready to explain: its network, the method and the layer
    resolved once (finding the layer runs the network on a blank image), for any number
    of ``explain`` calls (the command line's chunks)."""

    def __init__(self, estimator, *, method="gradcam", layer="auto"):
        self.method = _method(method)
        self.explained = network_of(estimator)
        self.layer = _target_layer(self.explained, layer)

    @property
    def batch_size(self) -> int:
        return self.explained.batch_size

    def explain(self, X, target=None, *, images: bool = False) -> Explanation:
        """The maps of the images ``X``, their targets and scores, and with ``images``
        the decoded images (for a caller that draws them: decoded once)."""
        explained = self.explained
        source = as_images(X)
        n = len(source)
        transform = _backbone.eval_transform(explained.cfg)
        found = Explanation([], [], np.empty(0), [] if images else None)
        with _frozen_parameters(explained.network), _explaining(explained.network):
            for start in range(0, n, explained.batch_size):
                idx = range(start, min(start + explained.batch_size, n))
                batch = [source.load(i) for i in idx]
                x = torch.stack([transform(img) for img in batch]).to(explained.device)
                with torch.no_grad():
                    outputs = explained.network(x)
                columns, labels = explained.outputs.columns(target, outputs, idx, n)
                found.scores = np.r_[found.scores, explained.outputs.scores(outputs, columns)]
                cams = _run(self.method, explained.network, self.layer, x, columns)
                for img, cam in zip(batch, cams, strict=True):
                    found.maps.append(_on_image(cam, explained.cfg, img.size))
                found.targets.extend(labels)
                if images:
                    found.images.extend(batch)
        return found


def overlay(image, cam, *, alpha=0.5):
    """A class activation map drawn over its image as a heat map (blue low, red high).

    Parameters
    ----------
    image : PIL image or ndarray of shape (height, width, 3), dtype uint8
        The image, as passed to [`class_activation_maps`][sktransfer.inspection.class_activation_maps]
        (greyscale and RGBA images are converted to RGB).
    cam : ndarray of shape (height, width)
        Its map, in [0, 1].
    alpha : float, default=0.5
        Weight of the heat map: 0 shows the image alone, 1 the map alone.

    Returns
    -------
    blended : ndarray of shape (height, width, 3), dtype uint8

    Examples
    --------
    >>> import numpy as np
    >>> from sktransfer.inspection import overlay
    >>> image = np.full((4, 6, 3), 128, dtype=np.uint8)
    >>> cam = np.zeros((4, 6), dtype=np.float32); cam[1:3, 2:4] = 1.0
    >>> blended = overlay(image, cam, alpha=0.5)
    >>> blended.shape, blended.dtype.name
    ((4, 6, 3), 'uint8')
    >>> bool(blended[2, 3, 0] > blended[0, 0, 0])  # hot: more red
    True
    """
    from PIL import Image

    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    image = image[..., :3]
    cam = np.asarray(cam, dtype=np.float32)
    if cam.shape != image.shape[:2]:
        raise ValueError(
            f"The map has shape {cam.shape} but the image is {image.shape[0]}x"
            f"{image.shape[1]}: pass the map computed for this image, at its own size."
        )
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha={alpha!r} is not valid: expected a number in [0, 1].")
    from pytorch_grad_cam.utils.image import show_cam_on_image

    rgb = image.astype(np.float32) / 255.0
    return show_cam_on_image(rgb, np.clip(cam, 0, 1), use_rgb=True, image_weight=1 - alpha)


# ------------------------------------------------------------------------ the network


@dataclass
class _Explained:
    """An estimator as one network: normalised images in, class scores out."""

    network: nn.Module
    backbone: nn.Module  # where layer names are looked up
    cfg: dict  # the preprocessing (timm data config)
    device: torch.device
    batch_size: int
    outputs: Outputs

    @classmethod
    def around(cls, fitted, outputs: Outputs, network: nn.Module | None = None) -> _Explained:
        """The network of ``fitted`` (an extractor or a fine-tuner): its backbone, or
        ``network`` built on it."""
        return cls(
            fitted.backbone_ if network is None else network,
            fitted.backbone_,
            fitted.data_config_,
            fitted.device_,
            fitted.batch_size,
            outputs,
        )


_SUPPORTED = (
    "a fitted FineTunedClassifier, a FineTunedRegressor, a "
    "PretrainedFeatureExtractor(layer='logits'), or a Pipeline whose first step is a "
    "PretrainedFeatureExtractor, whose middle steps are StandardScaler or PCA and whose "
    "last step is a linear classifier (with coef_, e.g. LogisticRegression)"
)


def network_of(estimator) -> _Explained:
    """``estimator`` as the one network its predictions come from; a TypeError naming
    what can be explained for anything else."""
    from ._features import PretrainedFeatureExtractor
    from ._finetune import FineTunedEstimator

    estimator = getattr(estimator, "best_estimator_", estimator)  # a fitted search
    if isinstance(estimator, FineTunedEstimator):
        return _fine_tuned(estimator)
    if isinstance(estimator, PretrainedFeatureExtractor):
        return _imagenet_classifier(estimator)
    if isinstance(estimator, Pipeline):
        return _probe(estimator)
    raise TypeError(f"Class activation maps explain {_SUPPORTED}; got {type(estimator).__name__}.")


def _fine_tuned(estimator) -> _Explained:
    check_is_fitted(estimator)
    classifier = is_classifier(estimator)
    if classifier:
        classes = estimator.classes_ if estimator.multitask_ else [estimator.classes_]
        names = estimator.task_names_ if estimator.multitask_ else None
    else:
        classes, names = [np.arange(estimator.n_outputs_)], None
    outputs = Outputs(classes, estimator._output_activation(), names, regression=not classifier)
    return _Explained.around(estimator, outputs)


def _imagenet_classifier(extractor) -> _Explained:
    check_is_fitted(extractor)
    if extractor.layer_ != "logits":
        raise TypeError(
            f"This PretrainedFeatureExtractor has layer={extractor.layer_!r}: its output is "
            "features, not class scores, so there is no class to explain. Use "
            "layer='logits' (its ImageNet classes), or explain a Pipeline that ends in a "
            "linear classifier on these features."
        )
    outputs = Outputs([np.arange(extractor.n_features_out_)], _softmax, None, regression=False)
    return _Explained.around(extractor, outputs)


def _probe(pipeline: Pipeline) -> _Explained:
    from ._features import PretrainedFeatureExtractor, _Embedding

    steps = [step for _, step in pipeline.steps if step not in (None, "passthrough")]
    extractor, middle, last = steps[0], steps[1:-1], steps[-1]
    if not isinstance(extractor, PretrainedFeatureExtractor) or len(steps) < 2:
        raise TypeError(f"Class activation maps explain {_SUPPORTED}; got a Pipeline of {steps}.")
    check_is_fitted(extractor)
    weight, bias = _folded_head(middle, last, extractor.n_features_out_)
    head = nn.Linear(weight.shape[1], weight.shape[0]).to(extractor.device_)
    with torch.no_grad():
        head.weight.copy_(torch.as_tensor(weight, dtype=torch.float32))
        head.bias.copy_(torch.as_tensor(bias, dtype=torch.float32))
    embedding = _Embedding(extractor.backbone_, extractor.layer_, extractor.pooling_)
    outputs = Outputs([np.asarray(last.classes_)], _softmax, None, regression=False)
    return _Explained.around(extractor, outputs, nn.Sequential(embedding, head).eval())


def _folded_head(middle, last, width: int) -> tuple[np.ndarray, np.ndarray]:
    """The linear steps after the extractor as one affine map (weight, bias) from
    features to class scores. A binary classifier's decision z becomes the two scores
    (-z/2, z/2), whose softmax is its sigmoid."""
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    weight, bias = np.eye(width), np.zeros(width)
    for step in middle:
        check_is_fitted(step)
        if isinstance(step, StandardScaler):
            scale = step.scale_ if step.scale_ is not None else np.ones(width)
            mean = step.mean_ if step.mean_ is not None else np.zeros(width)
            w, b = np.diag(1 / scale), -mean / scale
        elif isinstance(step, PCA):
            w = step.components_
            b = -step.components_ @ step.mean_
            if step.whiten:
                w, b = (
                    w / np.sqrt(step.explained_variance_)[:, None],
                    b / np.sqrt(step.explained_variance_),
                )
        else:
            raise TypeError(
                f"Class activation maps explain {_SUPPORTED}; the Pipeline has a "
                f"{type(step).__name__} step, which cannot be folded into a linear head."
            )
        weight, bias = w @ weight, w @ bias + b
    if not hasattr(last, "coef_") or not hasattr(last, "classes_"):
        raise TypeError(
            f"Class activation maps explain {_SUPPORTED}; the Pipeline ends in a "
            f"{type(last).__name__}, which is not a fitted linear classifier."
        )
    coef = np.atleast_2d(last.coef_)
    intercept = np.atleast_1d(np.asarray(last.intercept_, dtype=np.float64))
    if coef.shape[0] == 1 and len(last.classes_) == 2:
        coef, intercept = np.vstack([-coef / 2, coef / 2]), np.array([-1, 1]) * intercept / 2
    return coef @ weight, coef @ bias + intercept


def _softmax(logits: torch.Tensor) -> torch.Tensor:
    return torch.softmax(logits, dim=1)


# ------------------------------------------------------------------------ the targets


class Outputs:
    """The network's output columns as labels: one block of columns per task (one
    block unless the classifier is multi-task), the labels of each block, and how
    outputs become scores. The one place a user's ``target`` is read."""

    def __init__(self, labels, activation, task_names, *, regression: bool):
        self.labels = [np.asarray(block) for block in labels]
        self.offsets = np.cumsum([0, *(len(block) for block in self.labels)])[:-1]
        self.activation = activation
        self.task_names = None if task_names is None else list(task_names)
        self.regression = regression

    def columns(self, target, outputs: torch.Tensor, idx: range, n: int):
        """The output column explained for each image of the batch ``idx`` (of ``n``
        images), and its label."""
        per_image = isinstance(target, list | np.ndarray)
        if per_image and len(target) != n:
            raise ValueError(
                f"target has {len(target)} entries but X has {n} images: pass one target "
                "per image, or a single target for all of them."
            )
        picked = [
            self._column(target[i] if per_image else target, outputs[k]) for k, i in enumerate(idx)
        ]
        return [c for c, _ in picked], [label for _, label in picked]

    def _column(self, target, output: torch.Tensor):
        task, label = self._task_and_label(target)
        block = self.labels[task]
        offset = int(self.offsets[task])
        if label is None:
            self.check_predicted(task)
            j = int(torch.argmax(output[offset : offset + len(block)]))
        else:
            matches = [j for j, known in enumerate(block.tolist()) if _same(known, label)]
            if not matches:
                raise ValueError(self._unknown(label, task))
            j = matches[0]
        return offset + j, block[j].item() if hasattr(block[j], "item") else block[j]

    def check_predicted(self, task: int = 0) -> None:
        """Raise where "the predicted one" means nothing: a regressor of several outputs."""
        n = len(self.labels[task])
        if self.regression and n > 1:
            raise ValueError(
                f"This regressor has {n} outputs: pass the index of the one to explain as "
                f"the target (0 to {n - 1})."
            )

    def label_named(self, text: str):
        """The label of a one-task model that ``text`` names (the command line's
        ``--target``): the label written so, else the number it reads as ("7" and
        "7.0" name the label 7)."""
        labels = self.labels[0].tolist()
        for same in (lambda label: str(label) == text, lambda label: _same_number(label, text)):
            found = [label for label in labels if same(label)]
            if found:
                return found[0]
        raise ValueError(self._unknown(text, 0))

    def _unknown(self, label, task: int) -> str:
        block = self.labels[task].tolist()
        what = "an output index" if self.regression else "a class label"
        shown = ", ".join(map(repr, block[:_SHOWN_LABELS]))
        if len(block) > _SHOWN_LABELS:
            shown += f", ... ({len(block)} in all)"
        return (
            f"target={label!r} is not {what} of this model; it knows {shown}. Pass one of "
            "them, or leave the target out to explain the predicted one."
        )

    def _task_and_label(self, target):
        if len(self.labels) == 1:
            return 0, target
        if not (isinstance(target, tuple) and len(target) == 2):
            names = self.task_names or list(range(len(self.labels)))
            raise ValueError(
                f"This classifier predicts {len(self.labels)} label columns ({names}): pass "
                "target=(task, label), task a column name or index and label one of its "
                "classes, or (task, None) for the predicted class; got "
                f"target={target!r}."
            )
        task, label = target
        if self.task_names is not None and task in self.task_names:
            return self.task_names.index(task), label
        if isinstance(task, Integral) and 0 <= task < len(self.labels):
            return int(task), label
        raise ValueError(
            f"target names the task {task!r}, which this classifier does not have: its "
            f"label columns are {self.task_names or list(range(len(self.labels)))}."
        )

    def scores(self, outputs: torch.Tensor, columns: list[int]) -> np.ndarray:
        with torch.no_grad():
            values = self.activation(outputs)
        picked = values[torch.arange(len(columns)), torch.as_tensor(columns)]
        return picked.detach().cpu().numpy().astype(np.float64)


def _same(known, label) -> bool:
    """Labels compare as Python values: ``np.int64(1)`` is ``1``, ``"1"`` is not."""
    try:
        return bool(known == label)
    except (TypeError, ValueError):  # an array, or a type that refuses comparison
        return False


def _same_number(label, text: str) -> bool:
    """Whether ``text`` reads as the number ``label``."""
    if not isinstance(label, Real) or isinstance(label, bool):
        return False
    try:
        return float(text) == label
    except ValueError:
        return False


# -------------------------------------------------------------------------- the layer


@dataclass
class _Layer:
    name: str
    module: nn.Module
    reshape: object  # pytorch-grad-cam's reshape_transform: tokens -> (n, c, h, w)
    tokens: bool


def _target_layer(explained: _Explained, layer) -> _Layer:
    backbone = explained.backbone
    shapes = _output_shapes(explained)
    tokens = _token_grid(backbone, explained.cfg)
    channels_last = getattr(backbone, "output_fmt", "NCHW") == "NHWC"
    spatial = [n for n, shape in shapes.items() if _is_spatial(shape, tokens, channels_last)]
    if not spatial:
        raise _no_spatial_layer(backbone)
    modules = dict(backbone.named_modules())
    if layer == "auto":
        name = _auto_layer(backbone, spatial, shapes, tokens)
    elif isinstance(layer, str) and layer in modules and layer:
        name = layer
    else:
        raise ValueError(
            f"layer={layer!r} is not a layer of this {type(backbone).__name__}."
            f"{did_you_mean(layer, [m for m in modules if m])} Layers with a spatial output "
            f"include: {_candidates(spatial)} (or 'auto'; any name of "
            "backbone_.named_modules() with a spatial output)."
        )
    shape = shapes.get(name)
    if name not in spatial:
        raise ValueError(
            f"layer={name!r} outputs shape {tuple(shape) if shape else 'nothing'}, not a "
            f"spatial map: there is nothing to lay on the image. Choose a layer with a "
            f"spatial output: {_candidates(spatial)}."
        )
    reshape = _reshape(shape, tokens, channels_last)
    return _Layer(name, modules[name], reshape, tokens is not None and len(shape) == 3)


def _no_spatial_layer(backbone: nn.Module) -> ValueError:
    return ValueError(
        f"This {type(backbone).__name__} has no layer with a spatial output at this input "
        "size (every feature map is a single cell): there is no map to lay on the image. "
        "Use a larger image_size."
    )


def _output_shapes(explained: _Explained) -> dict[str, tuple]:
    """The output shape of each module of the backbone on one blank image, in the
    order the modules finish."""
    shapes, hooks = {}, []
    for name, module in explained.backbone.named_modules():
        if not name:
            continue

        def record(_module, _input, output, name=name):
            if isinstance(output, torch.Tensor):
                shapes.pop(name, None)
                shapes[name] = tuple(output.shape)

        hooks.append(module.register_forward_hook(record))
    try:
        blank = torch.zeros(1, *explained.cfg["input_size"], device=explained.device)
        with torch.no_grad():
            explained.network(blank)
    finally:
        for hook in hooks:
            hook.remove()
    return shapes


def _token_grid(backbone: nn.Module, cfg: dict) -> tuple[int, int, int] | None:
    """For a vision transformer: its patch grid at this input size and how many prefix
    (class, register) tokens precede the patches; None for other models."""
    patch_embed = getattr(backbone, "patch_embed", None)
    if patch_embed is None or not hasattr(patch_embed, "patch_size"):
        return None
    height, width = cfg["input_size"][1:]
    ph, pw = patch_embed.patch_size
    return height // ph, width // pw, int(getattr(backbone, "num_prefix_tokens", 0))


def _is_spatial(shape, tokens, channels_last: bool) -> bool:
    """Whether an output of ``shape`` is a map of more than one cell: a vision
    transformer's tokens on its patch grid, or a convolutional feature map (channels
    first, or last for models whose ``output_fmt`` says so)."""
    if tokens is not None:
        gh, gw, prefix = tokens
        return len(shape) == 3 and shape[1] == gh * gw + prefix and gh * gw > 1
    if len(shape) == 4:
        height, width = shape[1:3] if channels_last else shape[2:]
        return height * width > 1
    return False


def _auto_layer(backbone: nn.Module, spatial: list[str], shapes: dict, tokens) -> str:
    """A vision transformer's last block's attention input; otherwise the last module
    (in the order they finish) with a spatial output, outside the classifier head."""
    if tokens is not None and hasattr(backbone, "blocks") and len(backbone.blocks):
        last = f"blocks.{len(backbone.blocks) - 1}"
        return f"{last}.norm1" if f"{last}.norm1" in shapes else last
    head = tuple(_backbone.classifier_names(backbone))
    features = [name for name in spatial if not name.startswith(head)] if head else spatial
    if not features:
        raise _no_spatial_layer(backbone)
    return features[-1]


def _candidates(spatial: list[str]) -> str:
    """The last few spatial layers, block-level names first choice."""
    names = [name for name in spatial if name.count(".") <= 1] or spatial
    return ", ".join(names[-8:])


def _reshape(shape: tuple, tokens, channels_last: bool):
    """pytorch-grad-cam's ``reshape_transform``: the layer's output as (n, c, h, w)."""
    if len(shape) == 3:
        gh, gw, prefix = tokens

        def patches(t: torch.Tensor) -> torch.Tensor:
            grid = t[:, prefix:].reshape(t.shape[0], gh, gw, t.shape[2])
            return grid.permute(0, 3, 1, 2)

        return patches
    if channels_last:
        return lambda t: t.permute(0, 3, 1, 2)
    return None


# ------------------------------------------------------------------------ computation


def _method(method) -> CamMethod:
    if method not in METHODS:
        raise ValueError(
            f"method={method!r} is not known.{did_you_mean(method, METHODS)} Use one of "
            f"{list(METHODS)}."
        )
    return METHODS[method]


def import_grad_cam():
    """pytorch_grad_cam, or an ImportError naming the extra that installs it."""
    try:
        import pytorch_grad_cam
    except ImportError as exc:
        raise ImportError(
            "Class activation maps need pytorch-grad-cam: pip install sktransfer[inspection] "
            "(or pip install grad-cam)."
        ) from exc
    return pytorch_grad_cam


def _run(method: CamMethod, network, layer: _Layer, x: torch.Tensor, columns) -> np.ndarray:
    """The maps of a batch, at the model's input size, each in [0, 1]."""
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    targets = [ClassifierOutputTarget(c) for c in columns]
    quiet = io.StringIO()  # the gradient-free methods draw a progress bar per image
    with (
        method.build(network, layer.module, layer.reshape, layer.tokens) as cam,
        torch.enable_grad(),
        contextlib.redirect_stderr(quiet),
    ):
        return cam(x.requires_grad_(method.uses_gradients), targets)


@contextlib.contextmanager
def _frozen_parameters(network: nn.Module):
    """No gradient reaches the fitted parameters (only the activations need one); each
    parameter's flag is restored afterwards."""
    flags = [(p, p.requires_grad) for p in network.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


@contextlib.contextmanager
def _explaining(network: nn.Module):
    """In eval mode, as predictions are made; afterwards each module is back in its own
    mode (a fitted backbone stays in eval mode whatever wraps it)."""
    modes = [(module, module.training) for module in network.modules()]
    network.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


# --------------------------------------------------------------------------- geometry


def _geometry(cfg: dict, size: tuple[int, int]):
    """How the model's eval transform places an image of ``size`` (width, height): the
    scale of each axis and the crop's offset, so that the pixel at ``u`` of the image
    lies at ``u * scale - offset`` of the model's input. ``Preprocess`` computes the
    sizes as timm's transform does, for every crop mode."""
    preprocess = Preprocess.of(cfg)
    resized = preprocess.resized_size(size)
    left, top = preprocess.crop_offsets(size)
    return (resized[1] / size[1], resized[0] / size[0]), (top, left)


def _on_image(cam: np.ndarray, cfg: dict, size: tuple[int, int]) -> np.ndarray:
    """A map at the model's input laid on the image's own pixels (bilinear), 0 where
    the crop cut the image off."""
    (sy, sx), (oy, ox) = _geometry(cfg, size)
    rows = _interpolation(size[1], sy, oy, cam.shape[0])
    cols = _interpolation(size[0], sx, ox, cam.shape[1])
    return np.clip(rows @ cam.astype(np.float64) @ cols.T, 0, 1).astype(np.float32)


def _interpolation(n_out: int, scale: float, offset: int, n_in: int) -> np.ndarray:
    """(n_out, n_in) weights of linear interpolation: output pixel ``i`` samples the
    input at ``(i + 0.5) * scale - offset`` (pixel centres); 0 outside the input."""
    u = (np.arange(n_out) + 0.5) * scale - offset - 0.5
    inside = (u >= -0.5) & (u <= n_in - 0.5)
    u = np.clip(u, 0, n_in - 1)
    lo = np.floor(u).astype(int)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = u - lo
    weights = np.zeros((n_out, n_in))
    rows = np.arange(n_out)
    np.add.at(weights, (rows, lo), 1 - frac)
    np.add.at(weights, (rows, hi), frac)
    weights[~inside] = 0
    return weights
