"""The generators ``dicomnode train MODEL --generator NAME`` can train a model on.

A model trains on a generator through its ``fit_generated`` method; this module (synth
may import the models, not the other way round) says which generators there are for
which model and how each makes its studies.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING

from dicomnode.synth.ct.anatomical import AnatomicalCtOptions, anatomical_training_sample

if TYPE_CHECKING:  # the training code needs torch, which importing synth must not load
    from dicomnode.models.ct_lesion_training import GeneratedData

__all__ = ["generated_data", "generator_names"]


def _anatomical_ct() -> GeneratedData:
    """Training studies of 80 slices (the network sees patches), held-out ones the
    generator's full 120 x 256 x 256."""
    from dicomnode.models.ct_lesion_training import GeneratedData

    return GeneratedData(
        "anatomical",
        functools.partial(anatomical_training_sample, options=AnatomicalCtOptions(slices=80)),
        functools.partial(anatomical_training_sample, options=AnatomicalCtOptions()),
    )


_GENERATORS: dict[str, dict[str, Callable[[], GeneratedData]]] = {
    "ct-lesion-seg": {"anatomical": _anatomical_ct},
}


def generator_names(model: str) -> tuple[str, ...]:
    """The generators model ``model`` can train on (none for most)."""
    return tuple(_GENERATORS.get(model, {}))


def generated_data(model: str, name: str) -> GeneratedData:
    """The sources of generator ``name`` for ``model``.

    Raises
    ------
    ValueError
        When the model has no such generator; the message names those it has.
    """
    known = _GENERATORS.get(model, {})
    if name not in known:
        offer = f"; it has: {', '.join(known)}" if known else ""
        raise ValueError(f"model {model!r} has no generator {name!r}{offer}")
    return known[name]()
