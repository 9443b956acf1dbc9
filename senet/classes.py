"""The 1000 ILSVRC2012 classes in their two orders, for every module that maps class indices.

Two class orders exist and they are easy to mix up:

* ``"devkit"``: the ILSVRC2012 devkit order (``ILSVRC2012_ID - 1``). The SENet Caffe models emit
  their 1000 scores in this order (``kit fox`` n02119789 is class 0).
* ``"sorted"``: WNIDs sorted as strings (n01440764 tench is class 0). Caffe's own ilsvrc12 aux
  files (``synsets.txt``, ``val.txt``), timm and torchvision's ImageFolder use it.

The converter (timm's classifier rows) and the parity tools (labels) both use these tables, so
they live here, importing neither. The data files ship in ``senet/parity/labels/`` (its README).
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

import numpy as np

from senet.errors import DatasetError, UsageError

CLASS_ORDERS = ("devkit", "sorted")
NUM_CLASSES = 1000


def label_data(name: str) -> bytes:
    """The bytes of one file of the shipped ImageNet label data (``senet/parity/labels/``)."""
    return resources.files("senet").joinpath("parity", "labels", name).read_bytes()


@lru_cache(maxsize=None)
def wnids(order: str) -> tuple[str, ...]:
    """The 1000 WNIDs in ``order`` (unchecked: call ``check_order`` first)."""
    devkit = tuple(label_data("devkit_synsets.txt").decode("ascii").split())
    if order == "devkit":
        return devkit
    return tuple(sorted(devkit))


@lru_cache(maxsize=None)
def wnid_index(order: str) -> dict[str, int]:
    """{WNID: index in ``order``} (unchecked: call ``check_order`` first)."""
    return {wnid: i for i, wnid in enumerate(wnids(order))}


def check_order(order: str, what: str = "class order") -> str:
    """``order`` if it is one of CLASS_ORDERS, else UsageError naming ``what`` it is."""
    if order not in CLASS_ORDERS:
        raise UsageError(f"unknown {what} '{order}'", hint=f"use one of: {', '.join(CLASS_ORDERS)}")
    return order


def class_order(order: str = "devkit") -> list[str]:
    """The 1000 WNIDs in ``order`` ('devkit' or 'sorted'): class k is element k."""
    return list(wnids(check_order(order)))


def class_index(wnid: str, order: str = "devkit") -> int:
    """Index of ``wnid`` in ``order``; DatasetError when it is not one of the 1000 classes."""
    try:
        return wnid_index(check_order(order))[wnid]
    except KeyError:
        raise DatasetError(f"'{wnid}' is not one of the 1000 ILSVRC2012 classes") from None


def remap_table(from_order: str, to_order: str) -> np.ndarray:
    """int64 array ``t`` with ``t[i]`` = index in ``to_order`` of class ``i`` of ``from_order``.

    Use it to move labels or score columns between orders: ``labels_to = t[labels_from]``,
    ``scores_to[:, t] = scores_from``.
    """
    target = wnid_index(check_order(to_order))
    return np.array([target[w] for w in wnids(check_order(from_order))], dtype=np.int64)
