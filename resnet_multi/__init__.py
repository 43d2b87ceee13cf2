"""resnet_multi: the Residual Networks chapter of Dive into Deep Learning, one spec,
six frameworks and a NumPy reference.

Importing this package imports no deep-learning framework; pick one with e.g.
``from resnet_multi import torch as rn``.
"""

from .spec import ARCHS, ArchSpec, BatchNormSpec, BlockSpec, StageSpec, get_arch

__version__ = "0.1.0"
__all__ = ["ARCHS", "ArchSpec", "BatchNormSpec", "BlockSpec", "StageSpec", "get_arch", "__version__"]
