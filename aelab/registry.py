"""Name -> object registries for models, data sets, likelihoods, priors, metrics and epoch callbacks.

The CLI, ``from_pretrained`` and the contract tests discover components here, so adding
a model is a decorated function in one file, never a new branch in an if/elif chain.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class UnknownNameError(KeyError):
    """Raised when a registry is asked for a name it does not hold."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


def first_sentence(doc: str) -> str:
    """The first sentence of a docstring's first paragraph, on one line.

    Example:
        >>> first_sentence("Linear-probe accuracy of the codes, fitted on\\n    the train split. Slow.")
        'Linear-probe accuracy of the codes, fitted on the train split.'
    """
    text = " ".join(doc.strip().split("\n\n")[0].split())
    end = re.search(r"(?<=[.!?])\s+(?=[A-Z])", text)
    return text[: end.start()] if end else text


class Registry(Generic[T]):
    """A named collection of components.

    Example:
        >>> MODELS = Registry("model")
        >>> @MODELS.register("ae")
        ... def build_ae(): ...
        >>> MODELS.get("ae") is build_ae
        True
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._help: dict[str, str] = {}

    def register(self, name: str, help: str | None = None) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = obj
            doc = help if help is not None else (getattr(obj, "__doc__", None) or "")
            self._help[name] = first_sentence(doc)
            return obj

        return deco

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            close = difflib.get_close_matches(name, self._items, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}; registered {self.kind}s: "
                f"{', '.join(sorted(self._items))}{hint}"
            ) from None

    def unregister(self, name: str) -> T:
        """Remove ``name`` (e.g. a component registered by a test); returns what it held."""
        self._help.pop(name, None)
        return self._items.pop(name)

    def describe(self, name: str) -> str:
        return self._help.get(name, "")

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))

    def __len__(self) -> int:
        return len(self._items)

    def names(self) -> list[str]:
        return sorted(self._items)


MODELS: Registry = Registry("model")
DATASETS: Registry = Registry("data set")
LIKELIHOODS: Registry = Registry("likelihood")
PRIORS: Registry = Registry("prior")
METRICS: Registry = Registry("metric")
BACKBONES: Registry = Registry("backbone")
#: per-epoch evaluations a model family names in its registry entry: f(model, split, trainer_cfg) -> dict
EPOCH_EVALUATIONS: Registry = Registry("epoch evaluation")
#: per-epoch pictures a model family names in its registry entry: f(model, split, out_dir, epoch, class_names)
EPOCH_FIGURES: Registry = Registry("epoch figures")
#: feature-classifier loaders for the sample-quality metric (aelab.metrics.generative), registered from the
#: training layer: f(splits, config, cache_dir, label_factor, device) -> a trained FeatureClassifier
CLASSIFIER_LOADERS: Registry = Registry("feature classifier loader")
