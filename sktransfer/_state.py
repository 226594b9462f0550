"""Fitted state: swapped in whole when a fit succeeds, and stored as plain data.

A fit computes its fitted attributes aside and ``swap_in`` installs them at the end,
so a fit that fails (a bad image, Ctrl-C) leaves the previous model working, and a
thread that predicts meanwhile never finds it half-built.

What pickle, joblib and ``skops.io`` store is data only: ``to_data`` replaces each
torch module of an estimator's state by its timm name, constructor arguments and tensors
(numpy arrays), and each ``torch.device`` by its name; ``from_data`` rebuilds them
with timm. No timm, torch-module or skorch class is referenced by the file, so a timm
upgrade that renames a class cannot break it, and loading runs no code of those
libraries' classes. The versions of sktransfer, timm and torch are stored alongside; a
file saved with other versions warns
([`InconsistentVersionWarning`][sktransfer.InconsistentVersionWarning]) when loaded.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from sklearn.utils.validation import check_is_fitted
from torch import nn

from . import _backbone
from ._device import loadable_device, resolve_device
from ._warnings import warn_on_other_versions

_MODULE = "sktransfer:module"
_DEVICE = "sktransfer:device"
_VERSIONS = "_sktransfer_versions"


class StoredAsData:
    """Mixin of the estimators: pickle, joblib and skops store their state as data
    (``to_data``). Loading rebuilds the model on the best device of the loading
    machine when the estimator's ``device`` is ``"auto"`` (so each Dask worker or
    service picks its own), else on the device it was saved on, or on the CPU where that
    device is missing (with a warning)."""

    def __getstate__(self):
        return to_data(super().__getstate__())

    def __setstate__(self, state):
        state = {**_parameter_defaults(type(self)), **state}  # parameters added since
        device = _device_to_load_on(state)
        state = from_data(state, type(self).__name__, device)
        if "backbone_" in state:
            state = self._placed_on(state, device)
        super().__setstate__(state)

    def to_device(self, device):
        """Run the fitted model on ``device`` from now on, as if it had been loaded there.

        ``predict`` and ``transform`` use the fitted device (``device_``), not the
        ``device`` parameter, so moving a fitted model (say, loaded from a file onto the
        CPU, to a GPU of a service) takes this method.

        Parameters
        ----------
        device : str or torch.device
            ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"`` or ``"auto"`` (the best device
            of this machine). A device this machine lacks raises ``ValueError``.

        Returns
        -------
        self : estimator
        """
        check_is_fitted(self)
        resolved = resolve_device(device)
        self.backbone_.to(resolved)
        vars(self).update(self._placed_on(dict(vars(self)), resolved))
        return self

    def _placed_on(self, state: dict, device) -> dict:
        """The loaded fitted state, adjusted to run on ``device``."""
        return {**state, "device_": device}


def _parameter_defaults(cls) -> dict:
    """The default of each parameter of ``cls`` (whose ``__init__`` only stores them):
    what a file saved before a parameter existed gets for it (the behaviour it was saved
    with)."""
    return cls().get_params(deep=False)


def swap_in(estimator, fitted: Mapping) -> None:
    """Replace the fitted attributes of ``estimator`` (names ending in ``_``) by
    ``fitted`` in one step; attributes of an earlier fit that ``fitted`` lacks go."""
    stale = [k for k in vars(estimator) if _is_fitted_name(k) and k not in fitted]
    vars(estimator).update(fitted)
    for name in stale:
        vars(estimator).pop(name, None)


def _is_fitted_name(name: str) -> bool:
    return name.endswith("_") and not name.startswith("_")


def versions() -> dict[str, str]:
    """The versions that a saved model records."""
    from . import __version__

    return {
        "sktransfer": __version__,
        "timm": _backbone.TIMM_VERSION,
        "torch": str(torch.__version__),
    }


def to_data(state: Mapping) -> dict:
    """``state`` (an estimator's ``__dict__``) with torch modules and devices as data."""
    data = {k: _value_to_data(v) for k, v in state.items()}
    if any(_is_fitted_name(k) for k in state):
        data[_VERSIONS] = versions()
    return data


def from_data(data: Mapping, estimator_name: str, device: torch.device) -> dict:
    """The state that ``to_data`` stored, modules rebuilt on ``device`` (in eval
    mode); warns when it was saved with other versions."""
    state = dict(data)
    saved = state.pop(_VERSIONS, None)
    if saved is None and any(_is_fitted_name(k) for k in state):
        raise ValueError(
            f"This fitted {estimator_name} was saved by an earlier sktransfer, which stored "
            "pickled torch objects instead of data; this version cannot load it. Refit "
            "it (or load it with the sktransfer that saved it and refit there), then save "
            "it again."
        )
    if saved is not None:
        warn_on_other_versions(saved, versions(), estimator_name)
    return {k: _value_from_data(v, device) for k, v in state.items()}


def _device_to_load_on(state: Mapping) -> torch.device:
    if state.get("device") == "auto":  # a torch.device parameter is stored as a dict
        return resolve_device("auto")
    return loadable_device(_saved_device(state) or "cpu")


def _saved_device(data: Mapping) -> str | None:
    """The name of the device that the fitted state of ``data`` was on, if any."""
    value = data.get("device_")
    if isinstance(value, Mapping) and value.get("kind") == _DEVICE:
        return value["name"]
    return None if value is None else str(value)


def _value_to_data(value):
    if isinstance(value, nn.Module):
        tensors = value.state_dict()
        return {
            "kind": _MODULE,
            "architecture": _backbone.describe(value),
            "tensors": {k: _array(t) for k, t in tensors.items()},
            "dtypes": {k: str(t.dtype).removeprefix("torch.") for k, t in tensors.items()},
        }
    if isinstance(value, torch.device):
        return {"kind": _DEVICE, "name": str(value)}
    return value


def _value_from_data(value, device: torch.device):
    if not isinstance(value, Mapping):
        return value
    if value.get("kind") == _DEVICE:
        return torch.device(value["name"])
    if value.get("kind") != _MODULE:
        return value
    tensors = {
        k: torch.from_numpy(np.array(a)).to(getattr(torch, value["dtypes"][k]))
        for k, a in value["tensors"].items()
    }
    return _backbone.rebuild(value["architecture"], tensors).to(device)


def _array(tensor: torch.Tensor) -> np.ndarray:
    """A tensor as a numpy array (dtypes numpy lacks, such as bfloat16, as float32)."""
    tensor = tensor.detach().to("cpu")
    if tensor.dtype == torch.bfloat16:
        tensor = tensor.float()
    return tensor.contiguous().numpy()
