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
import json
import os
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
        check_is_fitted(self)
        validate_params(self, ("tta",))  # the one parameter the graph reads
        network, output, metadata = self._onnx_network()
        return export_onnx(
            network,
            path,
            input_size=self.data_config_["input_size"],
            output=output,
            metadata={
                "estimator": type(self).__name__,
                "preprocessing": self.data_config_,
                **metadata,
            },
            opset_version=opset_version,
        )

    @abstractmethod
    def _onnx_network(self) -> tuple[nn.Module, str, dict]:
        """The network to export, the name of its output and the metadata to record."""


def export_onnx(
    network: nn.Module, path, *, input_size, output: str, metadata: dict, opset_version: int
) -> Path:
    """Write ``network`` (a copy of it, float32 on the CPU) to the ONNX file ``path``.

    ``metadata`` is stored as JSON under the key ``"sktransfer"``, with the versions and
    the names of the input and output added.
    """
    try:
        import onnx
    except ImportError as exc:
        raise ImportError(
            "export_onnx needs the onnx and onnxscript packages: pip install "
            "'sktransfer[onnx]' (onnxruntime, to run the file, is in that extra too)."
        ) from exc
    path = Path(os.fspath(path))
    network = copy.deepcopy(network).to("cpu", torch.float32).eval()
    network = network.to(memory_format=torch.contiguous_format)
    example = torch.zeros(2, *input_size)
    program = torch.onnx.export(
        network,
        (example,),
        dynamo=True,
        input_names=["images"],
        output_names=[output],
        dynamic_shapes=({0: torch.export.Dim("batch")},),
        opset_version=opset_version,
        verbose=False,
    )
    model = program.model_proto
    info = {"input": "images", "output": output, **metadata, "versions": versions()}
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(info, default=_plain)
    onnx.save(model, str(path))
    return path


def _plain(value):
    """JSON for what ``json`` does not know: numpy scalars and arrays."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)
