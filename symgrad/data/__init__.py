"""Trajectory data files: schema, lazy sharded reader, writer, splits, transitions, generation.

Files follow the PDEGym layout (``data`` of dims ``(sample, time, channel, x, y)``, float32,
channels ``(rho, u, v, p, E)``), or The Well's HDF5 layout (``symgrad.data.well``, read; and
``write_well``); states served to the rest of symgrad are
``(..., nx, ny, 4)`` conservative ``(rho, m_x, m_y, E)`` float32. See ``docs/data-format.md``.
Importing this package does not import JAX (only generation does). The file layout's
names (``CHANNELS``, ``DIMS``, the channel conversions) live in ``symgrad.data.schema``.
"""

from symgrad.data import schema as schema
from symgrad.data.coarsen import coarsen as coarsen
from symgrad.data.generate import (
    generate_dataset as generate_dataset,
    solve_dataset as solve_dataset,
)
from symgrad.data.reader import (
    TrajectoryDataset as TrajectoryDataset,
    open_dataset as open_dataset,
)
from symgrad.data.transitions import (
    SPLITS as SPLITS,
    TransitionSource as TransitionSource,
    split_trajectories as split_trajectories,
)
from symgrad.data.well_writer import write_well as write_well
from symgrad.data.writer import DatasetWriter as DatasetWriter, write_dataset as write_dataset

__all__ = [
    "DatasetWriter",
    "SPLITS",
    "TrajectoryDataset",
    "TransitionSource",
    "coarsen",
    "generate_dataset",
    "open_dataset",
    "schema",
    "solve_dataset",
    "split_trajectories",
    "write_dataset",
    "write_well",
]
