"""Signature, constraints and documentation of every estimator agree (in the spirit of
scikit-learn's ``test_docstring_parameters``), and a parameter reads the same wherever
it is documented."""

from __future__ import annotations

import inspect
import re

import pytest

import sktransfer
import sktransfer.serving
from sktransfer._docs import GROUPS, PARAMETERS, SERVING_PARAMETERS

ESTIMATORS = [
    sktransfer.PretrainedFeatureExtractor,
    sktransfer.FineTunedClassifier,
    sktransfer.FineTunedRegressor,
]

# Parameters of the extractor that mean something else for a fine-tuner, so their
# paragraphs differ on purpose.
EXTRACTOR_OWN = {
    "weights": "a fine-tuner also starts from a fitted fine-tuner (sequential transfer)",
    "batch_size": "a fine-tuner's batches are training steps too",
    "precision": "a fine-tuner trains in bfloat16 where the extractor would use float16",
    "num_workers": "a fine-tuner decodes augmented batches in processes",
    "memory": "a fine-tuner caches frozen activations, not only embeddings",
}


def documented(cls) -> dict[str, str]:
    """The Parameters section of ``cls``'s docstring: name -> paragraph, in order."""
    doc = inspect.cleandoc(cls.__doc__)
    section = doc.split("Parameters\n----------\n", 1)[1].split("\n\n", 1)[0]
    section = re.split(r"\n(?=Attributes\n)", section)[0]
    paragraphs = {}
    for line in section.splitlines():
        if line and not line.startswith(" "):
            name = line.split(" : ")[0]
            paragraphs[name] = [line]
        else:
            paragraphs[name].append(line)
    return {name: "\n".join(lines).rstrip() for name, lines in paragraphs.items()}


def signature(cls) -> list[str]:
    return [p for p in inspect.signature(cls.__init__).parameters if p != "self"]


SERVED = [
    sktransfer.serving.ServedFeatureExtractor,
    sktransfer.serving.ServedClassifier,
    sktransfer.serving.ServedRegressor,
]


@pytest.mark.parametrize("cls", ESTIMATORS + SERVED, ids=lambda c: c.__name__)
def test_signature_constraints_and_documentation_agree_in_order(cls):
    assert list(cls._param_constraints) == signature(cls)
    assert list(documented(cls)) == signature(cls)


@pytest.mark.parametrize("cls", ESTIMATORS + SERVED, ids=lambda c: c.__name__)
def test_no_placeholder_is_left(cls):
    assert "{{" not in cls.__doc__ and "}}" not in cls.__doc__


def test_the_fine_tuners_share_their_parameters_word_for_word():
    classifier, regressor = (documented(c) for c in ESTIMATORS[1:])
    for name in GROUPS["fine-tuning"]:
        assert classifier[name] == regressor[name] == PARAMETERS[name], name
    assert signature(ESTIMATORS[1])[: len(GROUPS["fine-tuning"])] == list(GROUPS["fine-tuning"])


def test_a_parameter_reads_the_same_in_every_estimator():
    docs = [documented(c) for c in ESTIMATORS]
    names = {name for doc in docs for name in doc}
    for name in sorted(names):
        paragraphs = {doc[name] for doc in docs if name in doc}
        if name in EXTRACTOR_OWN:
            fine_tuners = {doc[name] for doc in docs[1:]}
            assert len(fine_tuners) == 1 and paragraphs - fine_tuners, name
            continue
        assert len(paragraphs) == 1, f"{name!r} is documented differently: {paragraphs}"


def test_the_serving_estimators_share_their_parameters_word_for_word():
    for cls in SERVED:
        doc = documented(cls)
        assert list(doc) == list(SERVING_PARAMETERS), cls.__name__
        for name, text in SERVING_PARAMETERS.items():
            assert doc[name] == text, (cls.__name__, name)


def test_no_fit_is_overridden_only_to_document_it():
    for cls in ESTIMATORS[1:]:
        assert "fit" not in vars(cls), cls.__name__
