"""The memory plan of an overlap computation: every array counted per device, before any is made.

``plan_overlap`` takes the model, the batch shapes, the group's elements, the settings and
the devices, and returns a ``MemoryPlan``: the right-hand-side chunks (an element's rows
split across chunks when they must be), the vectors per Gauss-Newton product, the bytes of
stored Lanczos vectors, and a table of what each part of the computation holds at the
peak, per device. When nothing fits it raises ``PlanError``: one line that says what to
change. ``compute_overlaps`` plans before it solves and stores the plan in its result;
``symgrad overlap --plan`` prints it without solving, for devices that need not be here
(``--device-memory 80GB --devices 8``).

What is counted (docs/overlap.md section 8), in bytes of the computing dtype, P parameters,
per device:

* the parameters (flat, and the pytree): 2 P;
* the linearisation on the curvature batch: the residuals ``jax.linearize`` keeps, by
  ``jax.eval_shape`` at the batch each device holds (the batch is sharded);
* one product's transient (the tangents of the vmapped jvp and its transpose):
  ``TANGENT_FIRST`` / ``TANGENT_PER_VECTOR`` linearisations, the ratios XLA's own memory
  analysis gives (``benchmarks/plan.py``, ``benchmarks/records/plan.json``);
* the solver's blocks, ``SOLVER_ARRAYS[solver]`` arrays of (columns, P) at once
  (right-hand sides, iterate, search block, two Lanczos blocks, and in a step the product,
  its projections and its QR; in ``finish`` the explicit residuals), sharded over devices;
* the stored Lanczos vectors (pages): what is left, or ``--basis-memory``;
* apart, the gradient phase (a few rows of per-sample gradients at a time).

On the host: the orchestration's (N, P) arrays (the v's, a chunk's elements' gradients,
the v-solutions and residuals), ``COMPILE_ALLOWANCE``, and on the CPU what the process
already holds when the plan is made (``MemoryPlan.host_runtime``).
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Sequence

import numpy as np

from symgrad.errors import SymgradError

GIB = 2**30
# The transient of one Gauss-Newton product, in linearisations: for one vector, and per
# vector of a larger product chunk. XLA's memory analysis of the compiled product (CPU,
# float64) gives 0.44, 1.38 and 2.53 at 1, 2 and 4 vectors for the tiny and the paper
# UNet alike, 0.69, 1.48 and 2.87 for the paper ViT (benchmarks/plan.py; its record
# benchmarks/records/plan.json): these cover both.
TANGENT_FIRST = 0.7
TANGENT_PER_VECTOR = 0.75
# (columns, P) arrays a solver holds at its peak, per column of a chunk.
SOLVER_ARRAYS = {"block": 9, "cg": 7, "dense": 3}
# The share of what is left after the fixed arrays that the blocks may take by default (the
# rest stores Lanczos vectors), and the share the product's transient may take.
BLOCK_SHARE = 0.5
PRODUCT_SHARE = 0.25
# XLA's default GPU memory pool: this fraction of the device (XLA_PYTHON_CLIENT_MEM_FRACTION).
DEFAULT_POOL = 0.75
MAX_PRODUCT_CHUNK = 32
# Host memory that XLA's compilations of the solver's programs take once the plan is made
# (their peak and the kept executables): about 0.5 GiB on the CPU at every model size
# measured (benchmarks/records/plan.json); compilation runs on the host with any backend.
COMPILE_ALLOWANCE = GIB // 2
# The deflation space (solvers._deflation): chunk 0 keeps k of its Lanczos vectors and their
# products (2 k vectors, where the later chunks hold Z and AZ), and their Ritz vectors deflate
# the later chunks. k is as many as fit, at most DEFLATION_MAX: Z and AZ take at most
# DEFLATION_SHARE of what the blocks leave (all of it beside a --basis-memory). The more the
# better: on the tiny proxy's replica at lambda 1e-4 (chunk 0's Krylov space had 744
# dimensions) 256 kept vectors took 2,660 products, 512 1,972, 1,024 1,692
# (benchmarks/records/overlap_levers.json).
DEFLATION_MAX = 1024
DEFLATION_SHARE = 0.5
# While chunk 0's vectors become the space: its pages, their products and Z formed from them,
# and one more set for the padded copies of the kernels (``_rows.pad_to_bucket``) or a QR.
# Measured on the small UNet (vectors of 13.8 MB, benchmarks/records/overlap.json): with 256
# kept vectors a host peak of 12.3 GB against the plan's 15.5; with 380 (not a multiple of 8:
# padded copies), 23.7 GB against 23.5.
RECYCLE_PHASE = 4
# Fewer kept vectors than this are not worth a deflation space.
MIN_DEFLATION = 16


class PlanError(SymgradError):
    """The computation does not fit the devices' memory; the message says what to change."""


def parse_memory(text: str) -> int:
    """``"80GB"``, ``"80 GiB"``, ``"512MB"`` to bytes. GB and GiB both mean 2^30 bytes here, as
    nvidia-smi and device specifications count (an "80 GB" H100 holds 80 GiB)."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]i?B?)?\s*", str(text), flags=re.IGNORECASE)
    if not match:
        raise SymgradError(f"cannot read the memory size {text!r}; write it like 80GB or 512MB")
    unit = (match.group(2) or "G")[0].upper()
    return int(float(match.group(1)) * {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}[unit])


@dataclasses.dataclass(frozen=True)
class Devices:
    """The devices a plan is for: how many, the memory of each, and the share XLA may use."""

    count: int
    memory: int  # bytes per device
    pool: float  # the fraction of it that arrays may use
    kind: str

    @property
    def budget(self) -> int:
        return int(self.memory * self.pool)

    @classmethod
    def present(cls, count: int | None = None) -> "Devices":
        """The devices of this process: the accelerator's pool limit, or the host's available memory."""
        import jax

        devs = jax.devices()
        dev = devs[0]
        stats = dev.memory_stats() if hasattr(dev, "memory_stats") else None
        n = len(devs) if count is None else int(count)
        if stats and stats.get("bytes_limit"):
            return cls(n, int(stats["bytes_limit"]), 1.0, f"{dev.platform} ({dev.device_kind})")
        # the CPU devices share the host's memory
        return cls(n, _host_available() // max(1, n), 1.0, "cpu (host memory)")

    @classmethod
    def given(cls, memory: str | int, count: int = 1) -> "Devices":
        """Devices that need not be here: ``memory`` each, XLA's pool fraction of it."""
        total = parse_memory(memory) if isinstance(memory, str) else int(memory)
        pool = float(os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION", DEFAULT_POOL))
        return cls(int(count), total, pool, f"given ({total / GIB:g} GiB each, pool {pool:g})")


def _host_available() -> int:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def host_rss() -> int:
    """This process's resident memory now (bytes)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# ----------------------------------------------------------------------------- chunks


@dataclasses.dataclass(frozen=True)
class Chunk:
    """The right-hand sides solved together: rows of the v's, rows of elements' u's, and the
    elements that reuse the v-solves (valued once every v is solved)."""

    v_rows: tuple[int, ...] = ()
    parts: tuple[tuple[int, tuple[int, ...]], ...] = ()  # (element, rows of its u's)
    free: tuple[int, ...] = ()

    @property
    def columns(self) -> int:
        return len(self.v_rows) + sum(len(rows) for _, rows in self.parts)

    @property
    def elements(self) -> tuple[int, ...]:
        return self.free + tuple(dict.fromkeys(k for k, _ in self.parts))

    def describe(self, n: int, names: Sequence[str] | None = None) -> str:
        name = (lambda k: names[k]) if names else str  # noqa: E731
        bits = [("v's" if len(self.v_rows) == n else f"v's {_span(self.v_rows)}")] if self.v_rows else []
        bits += [name(k) + ("" if len(rows) == n else f" {_span(rows)}") for k, rows in self.parts]
        bits += [f"{name(k)} (reuses the v-solves)" for k in self.free]
        return ", ".join(bits)


def _span(rows) -> str:
    return f"rows {rows[0]}-{rows[-1]}" if len(rows) > 1 else f"row {rows[0]}"


def layout(n: int, reused: Sequence[bool], solver: str, columns: int | None) -> tuple[Chunk, ...]:
    """The chunks of ``columns`` right-hand sides at most (None: one chunk).

    The block solver keeps the v's and whole elements together while a chunk holds the v's
    and one element (one shared Krylov space when everything fits); below that, the v's are
    solved first in chunks of their own and then every element's rows, split across chunks
    as they fit. The baseline CG keeps its own shape: the v's, then one element per chunk.
    Elements that reuse the v-solves cost no columns.
    """
    free = tuple(k for k, r in enumerate(reused) if r)
    paid = [k for k, r in enumerate(reused) if not r]
    every = tuple(range(n))
    if solver != "block":
        return (Chunk(every, (), free),) + tuple(Chunk((), ((k, every),)) for k in paid)
    total = n * (1 + len(paid))
    if columns is None or columns >= total:
        return (Chunk(every, tuple((k, every) for k in paid), free),)
    if columns >= 2 * n:  # the v's and whole elements
        chunks, parts, cols = [], [], n
        for k in paid:
            if cols + n > columns:
                chunks.append(parts)
                parts, cols = [], 0
            parts.append((k, every))
            cols += n
        chunks.append(parts)
        return (Chunk(every, tuple(chunks[0]), free),) + tuple(Chunk((), tuple(p)) for p in chunks[1:])
    out = [Chunk(every[i:i + columns]) for i in range(0, n, columns)]
    out[-1] = dataclasses.replace(out[-1], free=free)
    rows = [(k, i) for k in paid for i in range(n)]
    for start in range(0, len(rows), columns):
        block = rows[start:start + columns]
        parts = {}
        for k, i in block:
            parts.setdefault(k, []).append(i)
        out.append(Chunk((), tuple((k, tuple(r)) for k, r in parts.items())))
    return tuple(out)


# ----------------------------------------------------------------------------- the plan


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
    """What one overlap computation holds per device and on the host, and the choices that make it fit."""

    devices: Devices
    n_params: int
    itemsize: int
    samples: int
    curvature_batch: int
    chunks: tuple[Chunk, ...]
    product_chunk: int
    basis_bytes: int
    deflation_vectors: int  # k rows of Z (and of AZ) shared by every chunk's solve; 0: none
    parts: dict  # name -> bytes per device at the peak of the solves
    gradient_parts: dict  # name -> bytes per device while gradients are computed (not at the same time)
    recycle_parts: dict  # name -> bytes per device while chunk 0's vectors become the deflation space (once)
    host_parts: dict  # name -> bytes of host memory (the orchestration's arrays)
    host_runtime: int  # bytes the process held when planned (0 unless planned for this host)

    @property
    def columns(self) -> int:
        return max(c.columns for c in self.chunks)

    @property
    def peak(self) -> int:
        """Bytes per device at the peak: the solves', the gradients' or the deflation space's making."""
        return int(max(sum(self.parts.values()), sum(self.gradient_parts.values()),
                       sum(self.recycle_parts.values())))

    @property
    def host_peak(self) -> int:
        """Host bytes: the orchestration's arrays, and on the CPU the devices' arrays and the runtime."""
        on_host = self.devices.kind.startswith("cpu")
        return int(sum(self.host_parts.values()) + (self.peak * self.devices.count + self.host_runtime if on_host else 0))

    @property
    def basis_vectors(self) -> int:
        return self.basis_bytes // (self.n_params * self.itemsize)

    def to_dict(self) -> dict:
        return {
            "devices": self.devices.count, "device_memory_bytes": self.devices.memory,
            "device_budget_bytes": self.devices.budget, "device_kind": self.devices.kind,
            "peak_bytes_per_device": self.peak, "host_peak_bytes": self.host_peak,
            "parts_bytes": dict(self.parts), "gradient_parts_bytes": dict(self.gradient_parts),
            "recycle_parts_bytes": dict(self.recycle_parts),
            "host_parts_bytes": dict(self.host_parts), "host_runtime_bytes": self.host_runtime,
            "columns_per_chunk": self.columns, "chunks": len(self.chunks),
            "chunk_columns": [c.columns for c in self.chunks], "product_chunk": self.product_chunk,
            "basis_bytes": self.basis_bytes, "basis_vectors": self.basis_vectors,
            "deflation_vectors": self.deflation_vectors,
            "curvature_batch_per_device": self.curvature_batch // self.devices.count,
        }

    def describe(self, names: Sequence[str] | None = None, *, max_chunks: int = 12) -> str:
        d = self.devices
        lines = [f"memory plan: {d.count} x {d.kind}, {d.budget / GIB:.2f} GiB usable per device; "
                 f"P = {self.n_params:,} parameters in {8 * self.itemsize}-bit floats, N = {self.samples}, "
                 f"curvature batch {self.curvature_batch} ({self.curvature_batch // d.count} per device)",
                 "per device, during the solves:"]
        lines += [f"  {name:<52s} {size / GIB:9.3f} GiB" for name, size in self.parts.items()]
        lines.append("per device, while the gradients are computed (before a chunk's solve):")
        lines += [f"  {name:<52s} {size / GIB:9.3f} GiB" for name, size in self.gradient_parts.items()]
        if self.recycle_parts:
            lines.append("per device, while chunk 0's Lanczos vectors become the deflation space (once):")
            lines += [f"  {name:<52s} {size / GIB:9.3f} GiB" for name, size in self.recycle_parts.items()]
        lines.append(f"  {'peak per device':<52s} {self.peak / GIB:9.3f} GiB of {d.budget / GIB:.2f} "
                     f"({100 * self.peak / max(1, d.budget):.0f}%)")
        lines.append("host:")
        lines += [f"  {name:<52s} {size / GIB:9.3f} GiB" for name, size in self.host_parts.items()]
        if d.kind.startswith("cpu"):
            lines.append(f"  {'the devices above (CPU: host memory)':<52s} {self.peak * d.count / GIB:9.3f} GiB")
            lines.append(f"  {'what the process held when planned':<52s} {self.host_runtime / GIB:9.3f} GiB")
        lines.append(f"  {'host peak':<52s} {self.host_peak / GIB:9.3f} GiB")
        lines.append(f"chunks: {len(self.chunks)} of at most {self.columns} right-hand sides; "
                     f"{self.product_chunk} vector{'s' if self.product_chunk > 1 else ''} per Gauss-Newton "
                     f"product; {self.basis_vectors:,} Lanczos vectors stored ({self.basis_bytes / GIB:.3f} GiB); "
                     + (f"chunk 0 keeps {self.deflation_vectors} for the deflation space of the rest"
                        if self.deflation_vectors else "no deflation"))
        shown = self.chunks if len(self.chunks) <= max_chunks else self.chunks[:max_chunks - 2]
        for i, c in enumerate(shown):
            lines.append(f"  chunk {i}: {c.columns} right-hand sides: {c.describe(self.samples, names)}")
        if len(shown) < len(self.chunks):
            lines.append(f"  ... {len(self.chunks) - len(shown) - 1} more ...")
            c = self.chunks[-1]
            lines.append(f"  chunk {len(self.chunks) - 1}: {c.columns} right-hand sides: {c.describe(self.samples, names)}")
        return "\n".join(lines)


def linearisation_bytes(apply_fn, params, x_shape, dtype) -> int:
    """Bytes ``jax.linearize`` keeps for the model on a batch of ``x_shape`` (no computation:
    ``jax.eval_shape``): the residuals and the prediction."""
    import jax

    from symgrad.diagnostics.ggn import _linearize_flat

    spec = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(np.shape(a), dtype), params)
    _, pred, f_jvp = jax.eval_shape(_linearize_flat, apply_fn, spec, jax.ShapeDtypeStruct(tuple(x_shape), dtype))
    leaves = jax.tree_util.tree_leaves((pred, f_jvp))
    return int(sum(int(np.prod(a.shape)) * np.dtype(a.dtype).itemsize for a in leaves))


def product_transient(vectors: int, linearisation: int) -> int:
    """The transient of one product of ``vectors`` vectors, in bytes (``TANGENT_PER_VECTOR``)."""
    return int(linearisation * (TANGENT_FIRST if vectors == 1 else TANGENT_PER_VECTOR * vectors))


def plan_overlap(apply_fn, params, *, samples: int, input_shape: tuple, curvature_batch: int,
                 reused: Sequence[bool], config, devices: Devices, dtype, host_runtime: int = 0) -> MemoryPlan:
    """Plan the chi solves of ``compute_overlaps`` (module docstring); ``PlanError`` when nothing fits.

    ``params`` may be arrays or ``jax.ShapeDtypeStruct``s; ``input_shape`` is one sample's
    ``(nx, ny, c)``; ``config`` an ``OverlapConfig`` (its ``rhs_chunk``, ``product_chunk``,
    ``basis_memory``, ``grad_chunk`` and ``solver`` are honoured, the rest chosen here).
    """
    import jax

    n, d = int(samples), int(devices.count)
    if curvature_batch % d:
        raise PlanError(f"the curvature batch of {curvature_batch} samples does not split over {d} devices; "
                        f"set --curvature-samples to a multiple of {d}, or use fewer --devices")
    itemsize = np.dtype(dtype).itemsize
    p = int(sum(int(np.prod(np.shape(a))) for a in jax.tree_util.tree_leaves(params)))
    if config.solver == "dense":
        config.chi_solver().check(p)
    vec = p * itemsize
    per_device = curvature_batch // d
    lin = linearisation_bytes(apply_fn, params, (per_device,) + tuple(input_shape), dtype)
    paid = sum(not r for r in reused)
    total_columns = n * (1 + paid)
    grad_chunk = min(int(config.grad_chunk), n)
    resident = {"parameters (flat and pytree)": 2 * vec, f"linearisation ({per_device} samples)": lin}
    gradient_parts = dict(resident)
    gradient_parts[f"gradients, {grad_chunk} samples at a time"] = (
        grad_chunk * 2 * vec + product_transient(1, lin) * grad_chunk // per_device)
    budget = devices.budget
    left = budget - sum(resident.values())
    what_to_change = "use more --devices, --precision float32 or a smaller --curvature-samples"
    pc = int(config.product_chunk or _product_chunk(lin, vec, left, total_columns))
    product = product_transient(pc, lin) + 2 * pc * vec  # and its input and output vectors
    left -= product
    if sum(gradient_parts.values()) > budget:
        raise PlanError(f"the linearisation and the per-sample gradients need "
                        f"{sum(gradient_parts.values()) / GIB:.2f} GiB per device, more than the {budget / GIB:.2f} "
                        f"GiB usable: lower --grad-chunk, or {what_to_change}")
    if left <= 0:
        raise PlanError(f"the linearisation and one Gauss-Newton product need {(budget - left) / GIB:.2f} GiB "
                        f"per device, more than the {budget / GIB:.2f} GiB usable: {what_to_change}")
    arrays = SOLVER_ARRAYS.get(config.solver, SOLVER_ARRAYS["block"])
    # On several devices every (columns, P) array is sharded over the parameters; a QR may
    # gather one whole block on each device.
    per_column = arrays * vec / d + (vec if d > 1 else 0)
    if config.rhs_chunk:
        columns = min(int(config.rhs_chunk), total_columns)
    elif config.solver != "block":
        columns = n
    else:
        columns = int(min(total_columns, max(1, (left * BLOCK_SHARE) // per_column)))
    blocks = int(per_column * columns)
    if blocks > left:
        hint = "a smaller --rhs-chunk, " if config.rhs_chunk else ""
        raise PlanError(f"{columns} right-hand sides need {blocks / GIB:.2f} GiB per device for the solver's "
                        f"blocks, but {max(left, 0) / GIB:.2f} GiB are left: {hint}{what_to_change}")
    chunks = layout(n, reused, config.solver, columns)
    columns = max(c.columns for c in chunks)  # whole elements may leave a chunk short of the limit
    blocks = int(per_column * columns)
    free = left - blocks
    if config.solver != "block":
        basis = 0
    elif config.basis_memory is not None:  # the stored vectors of all devices together
        basis = int(config.basis_bytes)
        if basis / d > free:
            raise PlanError(f"--basis-memory {config.basis_memory:g} GB does not fit: "
                            f"{free * d / GIB:.2f} GiB are left on the devices after the blocks; lower it")
    else:  # what is left, but never more than a Krylov space can use (P vectors, or every step's block)
        useful = min(p, int(config.max_iterations) * columns) * vec
        basis = int(min(free * d, useful))
    basis = (basis // vec) * vec
    # on the CPU the devices' arrays share the host with the orchestration's: the deflation
    # space, the largest part that grows to fit, leaves them their room
    host_parts = _host_parts(chunks, n, vec)
    host = (sum(host_parts.values()) + int(host_runtime)) / d if devices.kind.startswith("cpu") else 0
    k = _deflation(config, p, vec, d, free - host, basis, budget - sum(resident.values()) - product - host, columns)
    if k and config.basis_memory is None:  # the basis takes what the deflation space leaves
        basis = (min(basis, int(free - 2 * k * vec / d) * d) // vec) * vec
    parts = dict(resident)
    parts[f"one product ({pc} vector{'s' if pc > 1 else ''} at a time)"] = product
    parts[f"solver blocks ({columns} columns x {arrays} arrays{', sharded' if d > 1 else ''})"] = blocks
    parts["stored Lanczos vectors" + (", sharded" if d > 1 else "")] = basis // d
    if k:
        parts[f"deflation space ({k} vectors and their products; in chunk 0 its Lanczos vectors"
              f"{', sharded' if d > 1 else ''})"] = int(2 * k * vec / d)
        gradient_parts["deflation space"] = int(2 * k * vec / d)
        recycle_parts = dict(resident)
        recycle_parts[f"one product ({pc} vector{'s' if pc > 1 else ''} at a time)"] = product
        recycle_parts[f"chunk 0's {k} Lanczos vectors, their products and Z"] = int(RECYCLE_PHASE * k * vec / d)
    else:
        recycle_parts = {}
    return MemoryPlan(devices, p, itemsize, n, int(curvature_batch), chunks, pc, basis, k, parts, gradient_parts,
                      recycle_parts, host_parts, int(host_runtime))


def _deflation(config, p: int, vec: int, d: int, free: int, basis: int, room: int, columns: int) -> int:
    """The vectors chunk 0 keeps for the deflation space: ``config.deflation_vectors`` if given
    (checked to fit), else none when the whole useful basis fits, else as many as fit
    (``DEFLATION_MAX`` at most, none below ``MIN_DEFLATION``): the vectors and their products (later Z and AZ) in
    ``DEFLATION_SHARE`` of what the blocks leave, and ``RECYCLE_PHASE`` k vectors in ``room``."""
    if config.solver != "block":
        return 0
    fits = lambda k: (2 * k * vec / d <= free - basis / d if config.basis_memory is not None  # noqa: E731
                      else 2 * k * vec / d <= DEFLATION_SHARE * free) and RECYCLE_PHASE * k * vec / d <= room
    if config.deflation_vectors is not None:
        k = min(int(config.deflation_vectors), p // 4)
        if k and not fits(k):
            raise PlanError(f"--deflation-vectors {config.deflation_vectors} does not fit beside the solver's blocks "
                            f"({2 * k} vectors during the solves, {RECYCLE_PHASE * k} while the space is made): "
                            "lower it")
        return k
    useful = min(p, int(config.max_iterations) * columns) * vec
    if basis >= useful:
        return 0
    share = (free - basis / d) if config.basis_memory is not None else DEFLATION_SHARE * free
    k = int(min(DEFLATION_MAX, p // 4, share * d // (2 * vec), room * d // (RECYCLE_PHASE * vec)))
    return k if k >= MIN_DEFLATION and fits(k) else 0


def _product_chunk(lin: int, vec: int, left: int, total_columns: int) -> int:
    """Vectors per product: powers of two while the product takes at most ``PRODUCT_SHARE`` of ``left``."""
    pc = 1
    while (pc * 2 <= min(MAX_PRODUCT_CHUNK, total_columns)
           and product_transient(2 * pc, lin) + 4 * pc * vec <= PRODUCT_SHARE * left):
        pc *= 2
    return pc


def _host_parts(chunks, n: int, vec: int) -> dict:
    """The orchestration's arrays on the host (``overlap.solve_overlaps``)."""
    held = max(len(c.elements) for c in chunks)
    host = {"per-sample gradients v": n * vec,
            f"gradients of a chunk's elements ({held} x N)": held * n * vec,
            "a chunk's right-hand sides before they move": max(c.columns for c in chunks) * vec,
            "compiling the solver's programs (measured allowance)": COMPILE_ALLOWANCE}
    if len(chunks) > 1:
        host["the v's solutions and residuals (2 N)"] = 2 * n * vec
    return host
