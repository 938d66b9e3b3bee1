"""Data sets (loaded or generated offline, never downloaded) and non-IID partitioning into clients."""

from orbitfl.data.datasets import (
    DATASETS,
    Dataset,
    HyperspectralScene,
    load,
    load_digits,
    load_hyperspectral,
    load_mnist,
    load_mnist1d,
    make_hyperspectral_scene,
    read_idx,
)
from orbitfl.data.partition import dirichlet_partition, iid_partition, shard_partition

__all__ = [
    "DATASETS",
    "Dataset",
    "HyperspectralScene",
    "dirichlet_partition",
    "iid_partition",
    "load",
    "load_digits",
    "load_hyperspectral",
    "load_mnist",
    "load_mnist1d",
    "make_hyperspectral_scene",
    "read_idx",
    "shard_partition",
]
