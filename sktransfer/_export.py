"""ONNX export of a fitted estimator's network, its preprocessing recorded in the file.

The exported graph takes preprocessed images, a float32 array ``images`` of shape
``(batch, 3, height, width)``, and gives what the estimator gives (embeddings,
probabilities or predictions). Decoding, resizing, cropping and normalising stay outside
the graph, as in any image-model service: the file's ``sktransfer`` metadata entry (JSON)
records how, with the estimator's name, its outputs, its classes and the versions that
exported it. The user guide's serving page shows the preprocessing in plain numpy/PIL.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import re
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np
import torch
from sklearn.utils.validation import check_is_fitted
from torch import nn

from ._params import validate_params
from ._state import versions

METADATA_KEY = "sktransfer"


class ExportsOnnx(ABC):
    """Mixin of the estimators: ``export_onnx``. Each estimator says what its network
    is with ``_onnx_network() -> (module, output name, metadata)``."""

    def export_onnx(self, path, *, opset_version=18):
        """Export the fitted network to an ONNX file, for serving without Python.

        The graph maps preprocessed images (float32, ``(batch, 3, height, width)``,
        resized, cropped and normalised as ``data_config_`` says) to what the estimator
        gives: ``features`` (``transform``), ``probabilities`` (``predict_proba``; with
        several label columns, side by side) or ``predictions`` (``predict``, always
        2-D), test-time augmentation included. The file's ``sktransfer`` metadata entry
        (JSON) records the preprocessing, the input and output names, ``classes_`` (of
        classifiers), ``layer`` and ``pooling`` (of extractors) and the versions. Needs
        the ``onnx`` extra (onnx, onnxscript; onnxruntime runs the file). The serving
        page of the user guide shows the preprocessing in numpy and PIL.

        Parameters
        ----------
        path : str or path-like
            Where to write the ``.onnx`` file.
        opset_version : int, default=18
            The ONNX opset.

        Returns
        -------
        path : pathlib.Path
        """
        graph = self._onnx_graph(opset_version)  # says which extra a missing onnx is in
        import onnx

        path = Path(os.fspath(path))
        onnx.save(graph, str(path))
        return path

    def _onnx_graph(self, opset_version: int = 18):
        """The fitted network as an ``onnx.ModelProto``, its metadata recorded."""
        check_is_fitted(self)
        validate_params(self, ("tta",))  # the one parameter the graph reads
        network, output, metadata = self._onnx_network()
        return onnx_graph(
            network,
            input_size=self.data_config_["input_size"],
            output=output,
            metadata={
                "estimator": type(self).__name__,
                "preprocessing": self.data_config_,
                **metadata,
            },
            opset_version=opset_version,
            owner=type(self).__name__,
        )

    @abstractmethod
    def _onnx_network(self) -> tuple[nn.Module, str, dict]:
        """The network to export, the name of its output and the metadata to record."""


def onnx_graph(
    network: nn.Module, *, input_size, output: str, metadata: dict, opset_version: int, owner: str
):
    """``network`` (a copy of it, float32 on the CPU) as an ``onnx.ModelProto``.

    ``metadata`` is stored as JSON under the key ``"sktransfer"``, with the versions and
    the names of the input and output added. A network that does not export raises a
    ``ValueError`` naming the layer at fault where one of the user's own layers is
    (``owner`` names the estimator).
    """
    try:
        import onnx  # noqa: F401 (the exporter needs it; say so before it fails)
    except ImportError as exc:
        raise ImportError(
            "Exporting to ONNX needs the onnx and onnxscript packages: pip install "
            "'sktransfer[onnx]' (onnxruntime, to run the graph, is in that extra too)."
        ) from exc
    network = copy.deepcopy(network).to("cpu", torch.float32).eval()
    network = network.to(memory_format=torch.contiguous_format)
    example = torch.zeros(2, *input_size)
    try:
        model = _exported(network, example, output, opset_version)
    except torch.onnx.OnnxExporterError as exc:
        raise ValueError(_not_exportable(network, example, exc, owner)) from exc
    info = {"input": "images", "output": output, **metadata, "versions": versions()}
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(info, default=_plain)
    return model


def _exported(module: nn.Module, example: torch.Tensor, output: str, opset_version: int):
    program = torch.onnx.export(
        module,
        (example,),
        dynamo=True,
        input_names=["images"],
        output_names=[output],
        dynamic_shapes=({0: torch.export.Dim("batch")},),
        opset_version=opset_version,
        verbose=False,
    )
    return program.model_proto


def _not_exportable(network: nn.Module, example, exc: Exception, owner: str) -> str:
    """Why ``network`` does not export, naming the first of the user's own layers (a
    class neither torch's nor timm's) that does not export on its own."""
    reason = _summary(exc)
    for name, module, inputs in _own_layers(network, example):
        try:
            torch.onnx.export(module, inputs, dynamo=True, verbose=False)
        except Exception as layer_exc:  # whatever the exporter raises for this layer
            cls = type(module)
            name = re.sub(r"^backbone\.", "backbone_.", name)  # the estimator's attribute
            return (
                f"The network of this {owner} cannot be exported to ONNX: its layer "
                f"{name!r} ({cls.__qualname__}, from {cls.__module__}) does not export "
                f"({_summary(layer_exc)}). Rewrite that layer with operations that "
                "torch.export can trace and ONNX supports (no data-dependent Python "
                "branches, no numpy), or remove it and refit. The torch estimator "
                "itself is unchanged and still predicts."
            )
    return (
        f"The network of this {owner} cannot be exported to ONNX ({reason}). Its layers "
        "are all torch's, timm's and sktransfer's, so its timm architecture does not "
        "export with this torch: try another opset_version, another torch, or another "
        "architecture. The torch estimator itself is unchanged and still predicts."
    )


def _own_layers(network: nn.Module, example) -> list:
    """``(name, module, inputs)`` of each layer whose class is the user's (neither
    torch's, timm's nor sktransfer's), with the inputs it receives, in the order they
    run."""
    found, hooks = [], []

    def record(name, module, args):
        found.append((name, module, args))

    for name, module in network.named_modules():
        if type(module).__module__.split(".")[0] not in ("torch", "timm", "sktransfer"):
            hooks.append(module.register_forward_pre_hook(functools.partial(record, name)))
    try:
        with torch.no_grad():
            network(example)
    finally:
        for hook in hooks:
            hook.remove()
    return found


def _summary(exc: Exception) -> str:
    """The exporter's one-line summary of ``exc`` (its messages run to pages)."""
    lines = [line.strip() for line in str(exc).splitlines()]
    if "## Exception summary" in lines:
        after = lines[lines.index("## Exception summary") + 1 :]
        lines = [line for line in after if line]
    text = next((line for line in lines if line), type(exc).__name__)
    text = re.sub(r"^<class '[\w.]+'>: ", "", text)
    return text.split(". ")[0].rstrip(".")[:300]


def _plain(value):
    """JSON for what ``json`` does not know: numpy scalars and arrays."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)
