"""Trajectory data files: schema, lazy sharded reader, writer, splits, transitions, generation.

Files follow the PDEGym layout (``data`` of dims ``(sample, time, channel, x, y)``, float32,
channels ``(rho, u, v, p, E)``); states served to the rest of symgrad are
``(..., nx, ny, 4)`` conservative ``(rho, m_x, m_y, E)`` float32. See ``docs/data-format.md``.
Importing this package does not import JAX (only generation does).
"""

from symgrad.data import schema as schema
from symgrad.data.generate import (
    generate_dataset as generate_dataset,
    partial_dir as partial_dir,
    solve_dataset as solve_dataset,
)
from symgrad.data.reader import (
    TrajectoryDataset as TrajectoryDataset,
    decode_json_attr as decode_json_attr,
    open_dataset as open_dataset,
)
from symgrad.data.schema import (
    CHANNELS as CHANNELS,
    DIMS as DIMS,
    conservative_to_file_channels as conservative_to_file_channels,
    file_channels_to_conservative as file_channels_to_conservative,
)
from symgrad.data.transitions import (
    SPLITS as SPLITS,
    TransitionSource as TransitionSource,
    split_trajectories as split_trajectories,
)
from symgrad.data.writer import DatasetWriter as DatasetWriter, write_dataset as write_dataset

__all__ = [
    "CHANNELS",
    "DIMS",
    "DatasetWriter",
    "SPLITS",
    "TrajectoryDataset",
    "TransitionSource",
    "conservative_to_file_channels",
    "decode_json_attr",
    "file_channels_to_conservative",
    "generate_dataset",
    "open_dataset",
    "partial_dir",
    "schema",
    "solve_dataset",
    "split_trajectories",
    "write_dataset",
]
