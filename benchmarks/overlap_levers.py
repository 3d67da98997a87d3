"""Which levers of the chi solver pay: the real solvers on an exact spectral replica of a problem.

    python benchmarks/overlap_levers.py                  # tiny UNet (cached by benchmarks/overlap.py), N=4, D4
    python benchmarks/overlap_levers.py --damping 1e-3

Builds, once, the eigen-decomposition of the Gauss-Newton matrix of a trained model on N
test transitions (dense Jacobian J~ = sqrt(H / N) J by vjps, NTK J~ J~^T in float64,
``eigh``; about 15 minutes for the tiny UNet at 32x32) and the coordinates of every
right-hand side (v and each element's u) in that eigenbasis, null space included. In those
coordinates ``lambda I + G`` is diagonal: the same spectrum and the same right-hand-side
geometry, so the same Krylov behaviour up to rounding, at no cost per product. The
library's own solvers (``symgrad.diagnostics.overlap.solve_overlaps``, unchanged) then run
every variant and the record lists the Gauss-Newton products each needs to certify every
value to ``--rtol``:

* ``cg``: the baseline (independent CG, residual rule);
* ``block`` with no stored basis (local reorthogonalisation only), a 1,000- and
  2,000-vector prefix, and the full basis;
* ``block`` with one chunk per element (no Krylov space shared across elements);
* ``block`` with local reorthogonalisation on the problem with the exact top 1,000
  eigenvectors removed: what an ideal rank-1,000 deflation or Nystrom preconditioner would
  leave to do (the cost of finding those eigenvectors, at least 1,000 products, not counted).

Also the spectrum itself: d_eff(lambda), the eigenvalues at ranks 1, 100, 1,000, 4,000,
8,000, the exact share of each ``<u, u>_chi`` from the null space of G, and the
``null_space_share_u`` the result files report, ``lambda ||chi u||^2 / <u, u>_chi``. Writes
``benchmarks/records/overlap_levers.json``. Excludes: the cost of the dense replica.
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
RECORD = ROOT / "records" / "overlap_levers.json"
CACHE = ROOT / ".cache"


def spectral_replica(run_dir: str, n_samples: int, group_name: str, path: Path):
    """``(sigma, C, R_null, names, reused)``: eigenvalues of G, range coordinates (D, K) and the
    null-space block (K, K) of the K right-hand sides ``[v, u^g for g not the identity]``."""
    if path.exists():
        import numpy as np

        with np.load(path) as f:
            return {k: f[k] for k in f.files}
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.flatten_util import ravel_pytree

    from symgrad import inputs as run_inputs
    from symgrad.diagnostics.gradients import per_example_gradients
    from symgrad.groups import named_group
    from symgrad.loss import smse_output_hessian_diag

    with jax.enable_x64(True):
        inputs = run_inputs.load(run_dir)
        _, _, x, y = run_inputs.test_transitions(inputs, n_samples, 0)
        x, y = jnp.asarray(x, jnp.float64), jnp.asarray(y, jnp.float64)
        params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), inputs.trained.params)
        sigma = jnp.asarray(inputs.trained.sigma, jnp.float64)
        apply = inputs.trained.apply_fn
        group = named_group(group_name, x.shape[1])
        v = per_example_gradients(apply, params, x, y, sigma)
        blocks, names = [np.asarray(v)], []
        for g in group.elements:
            gx, gy = group.act(g, x), group.act(g, y)
            if bool(jnp.array_equal(gx, x) and jnp.array_equal(gy, y)):
                continue
            blocks.append(np.asarray(per_example_gradients(apply, params, gx, gy, sigma)))
            names.append(str(g))
        b = np.concatenate(blocks)  # (K, P)
        flat, unravel = ravel_pytree(params)
        h = np.broadcast_to(np.asarray(smse_output_hessian_diag(sigma, x.shape[1], x.shape[2])), x.shape).reshape(-1)
        _, vjp = jax.vjp(lambda p: apply(unravel(p), x).reshape(-1), flat)
        rows = jax.jit(jax.vmap(lambda e: vjp(e)[0]))
        d = h.size
        jt = np.empty((d, flat.size))
        t0 = time.perf_counter()
        for s in range(0, d, 512):
            k = min(512, d - s)
            jt[s:s + k] = np.asarray(rows(jnp.zeros((k, d)).at[jnp.arange(k), s + jnp.arange(k)].set(1.0)))
        jt *= np.sqrt(h / n_samples)[:, None]
        print(f"Jacobian {jt.shape} in {time.perf_counter() - t0:.0f} s", flush=True)
        from scipy.linalg import eigh

        # dsyevr: numpy's dsyevd (4 GB of workspace at this size) was followed by a heap
        # corruption at process exit on this machine
        sig, w = eigh(jt @ jt.T, driver="evr")
        keep = sig > sig[-1] * 1e-15
        sig, w = sig[keep], w[:, keep]
        c = (w.T @ (jt @ b.T)) / np.sqrt(sig)[:, None]
        null = b.T - jt.T @ (w @ (c / np.sqrt(sig)[:, None]))
        _, r_null = np.linalg.qr(null)
    out = {"sigma": sig, "C": c, "R_null": r_null, "names": np.asarray(names), "n_params": np.asarray(flat.size)}
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **out)
    return out


class DiagonalOperator:
    """``lambda I + G`` in the eigenbasis of G: a ``symgrad.diagnostics.solvers.ChiOperator``."""

    def __init__(self, diagonal, damping):
        import jax.numpy as jnp

        self.damping = float(damping)
        self._a = jnp.asarray(diagonal)
        self.dtype = self._a.dtype
        self.n_params = int(self._a.shape[0])
        self.products = 0

    def __call__(self, block):
        self.products += int(block.shape[0])
        return self._a * block

    def rounding(self):  # one rounding per entry of a * z
        import numpy as np

        return float(np.finfo(np.float64).eps * np.max(np.abs(np.asarray(self._a))))

    def loop(self, body, *args):
        outputs, used = _diagonal_loop(body)(self._a, *args)
        self.products += int(used)
        return outputs


@functools.lru_cache(maxsize=None)
def _diagonal_loop(body):
    """``body`` (a ``ChiOperator.loop`` body) jitted over the diagonal operator, once per body."""
    import jax

    return jax.jit(lambda a, *args: body(lambda block: a * block, *args))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--run", default=str(CACHE / "runs" / "unet-tiny-32-t40-e3"),
                    help="trained run (default: the one benchmarks/overlap.py caches)")
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--group", default="d4")
    ap.add_argument("--damping", type=float, default=1e-6)
    ap.add_argument("--rtol", type=float, default=1e-6)
    ap.add_argument("--baseline-iterations", type=int, default=20_000)
    ap.add_argument("--record", default=str(RECORD))
    ap.add_argument("--recycling", action="store_true",
                    help="the deflation space where the basis cannot be stored (the paper regime's proxy: 16 "
                         "stored vectors, chunks of 8): without it, the previous Ritz-run space, and chunk 0's "
                         "recycled vectors at several sizes and Ritz floors")
    args = ap.parse_args(argv)

    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import numpy as np

    from symgrad.diagnostics.overlap import solve_overlaps
    from symgrad.diagnostics.solvers import CG, BlockLanczos

    tag = f"{Path(args.run).name}-n{args.samples}-{args.group}"
    rep = spectral_replica(args.run, args.samples, args.group, CACHE / f"spectral-{tag}.npz")
    sig, c, r_null = rep["sigma"], rep["C"], rep["R_null"]
    n, lam = args.samples, args.damping
    coords = jnp.asarray(np.concatenate([c, r_null], axis=0).T)  # (K, D + K): rows are right-hand sides
    diag = np.concatenate([sig + lam, np.full(r_null.shape[0], lam)])
    v = coords[:n]
    names = ["identity"] + [str(s) for s in rep["names"]]
    reused = [True] + [False] * (len(names) - 1)
    u_of = lambda k: coords[n * k:n * (k + 1)]  # noqa: E731
    exact = np.asarray(coords) @ (np.asarray(coords) / diag[None, :]).T
    quad = np.diagonal(exact)
    null_share = np.sum(r_null**2, axis=0) / lam / quad  # exactly from null(G)
    soft_share = lam * np.sum((np.asarray(coords) / diag[None, :]) ** 2, axis=1) / quad  # what the result files report
    if args.recycling:
        return _recycling(args, rep, coords, diag, v, u_of, names, reused, exact)
    variants = {
        "cg (baseline)": dict(solver=CG(max_steps=args.baseline_iterations)),
        "block, local reorthogonalisation only": dict(solver=BlockLanczos(basis_bytes=0)),
        "block, 1000-vector prefix": dict(solver=BlockLanczos(basis_bytes=1000 * diag.size * 8)),
        "block, 2000-vector prefix": dict(solver=BlockLanczos(basis_bytes=2000 * diag.size * 8)),
        "block, full basis": dict(solver=BlockLanczos()),
        "block, full basis, one chunk per element": dict(solver=BlockLanczos(), rhs_chunk=n),
    }
    top = np.argsort(-diag)[:1000]
    rest = np.setdiff1d(np.arange(diag.size), top)
    variants["block, local reorthogonalisation, exact top 1000 eigenvectors deflated"] = dict(
        solver=BlockLanczos(basis_bytes=0), keep=rest)
    rows = {}
    for label, kw in variants.items():
        keep = kw.pop("keep", None)
        sub = (lambda a: a) if keep is None else (lambda a: a[..., keep])  # noqa: E731
        op = DiagonalOperator(sub(diag), lam)
        t0 = time.perf_counter()
        results, v_side, log, chunks = solve_overlaps(op, sub(v), lambda k: sub(u_of(k)), reused, names,
                                                      rtol=args.rtol, **kw)
        worst = 0.0
        for k in range(1, len(names) if keep is None else 1):  # a deflated problem has other values
            m = results[k]["overlap_matrix_chi"]
            ref = exact[n * k:n * (k + 1), :n]
            scale = np.sqrt(np.outer(np.diagonal(exact)[n * k:n * (k + 1)], np.diagonal(exact)[:n]))
            worst = max(worst, float(np.max(np.abs(m - ref) / scale)))
        flagged = int(sum(bool(np.any(results[k]["error_bound_u"] / results[k]["chi_uu"] > args.rtol))
                          for k in range(1, len(names))))
        rows[label] = {"ggn_products": int(op.products), "chunks": chunks, "seconds": round(time.perf_counter() - t0, 1),
                       "max_error_vs_exact": worst, "elements_with_uncertified_quadratic_forms": flagged,
                       "krylov_dimension": [entry.get("krylov_dimension") for entry in log]}
        print(f"{label:45s} {op.products:8d} products  error vs exact {worst:.1e}", flush=True)
    ranks = [1, 100, 1000, 4000, 8000]
    desc = np.sort(sig)[::-1]
    entry = {
        "benchmark": "overlap_levers", "run": args.run, "samples": n, "group": args.group, "damping": lam,
        "rtol": args.rtol, "right_hand_sides": int(coords.shape[0]), "n_params": int(rep["n_params"]),
        "outputs": int(sig.size), "variants": rows,
        "spectrum": {"eigenvalue_at_rank": {str(r): float(desc[r - 1]) for r in ranks if r <= desc.size},
                     "d_eff": {f"{d:g}": float(np.sum(sig / (sig + d))) for d in (1e-6, 1e-3, 1e-2)},
                     "share_of_chi_uu_from_null_space": [round(float(s), 4) for s in null_share[n:]],
                     "null_space_share_u (lambda ||chi u||^2 / chi_uu)": [round(float(s), 4) for s in soft_share[n:]]},
        "excludes": "building the dense replica (cached); products are counted exactly, no model is evaluated",
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    path = Path(args.record)
    path.parent.mkdir(parents=True, exist_ok=True)
    records = json.loads(path.read_text()) if path.exists() else []
    key = lambda r: (r["run"], r["samples"], r["group"], r["damping"], r["rtol"])  # noqa: E731
    records = [r for r in records if key(r) != key(entry)] + [entry]
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(records, indent=2) + "\n")
    tmp.replace(path)
    return 0


def _recycling(args, rep, coords, diag, v, u_of, names, reused, exact) -> int:
    """``--recycling``: products of every variant of the deflation space on the replica."""
    import jax
    import numpy as np

    from symgrad.diagnostics.overlap import solve_overlaps
    from symgrad.diagnostics.plan import layout
    from symgrad.diagnostics.solvers import BlockLanczos
    from symgrad.diagnostics.solvers import _deflation

    n, lam, p = int(v.shape[0]), args.damping, int(diag.size)
    chunks = layout(n, reused, "block", 8)
    solver = BlockLanczos(basis_bytes=16 * p * 8)  # two blocks stored, as the proxy

    def ritz_run(op, k):  # the previous default: 256 Ritz vectors of G from a separate run, AZ by products
        from symgrad.diagnostics.solvers._lanczos import _combine, run_lanczos
        from symgrad.diagnostics.spectrum import block_tridiagonal

        undamped = DiagonalOperator(diag - lam, 0.0)
        start = jax.random.rademacher(jax.random.PRNGKey(0), (16, p), dtype=undamped.dtype)
        steps = -(-3 * k // 16)
        lanczos, omegas, betas = run_lanczos(undamped, start, steps=steps, basis_bytes=16 * (steps + 1) * p * 8)
        theta, y = np.linalg.eigh(block_tridiagonal(omegas, betas))
        top = np.argsort(theta)[::-1][:k]
        basis = np.concatenate([np.asarray(page) for page in lanczos.pages])[:len(theta)]
        z = _combine(y[:, top].T, basis)
        op.products += undamped.products
        return _deflation.Deflation(op, z)

    rows = {}
    variants = [("without deflation", 0, None, None), ("Ritz run: 256 Ritz vectors of G, AZ by products", 0, None, 256)]
    variants += [(f"chunk 0 keeps {k}, Ritz floor 10 lambda", k, 10.0, None) for k in (256, 512, 1024)]
    variants += [(f"chunk 0 keeps 1024, Ritz floor {f:g} lambda", 1024, f, None) for f in (1.0, 2.0, 100.0)]
    for label, keep, floor, ritz in variants:
        op = DiagonalOperator(diag, lam)
        _deflation.RITZ_FLOOR = 10.0 if floor is None else floor
        if ritz:
            import symgrad.diagnostics.overlap as overlap

            deflation = ritz_run(op, ritz)
            real = overlap._solve_chunk
            overlap._solve_chunk = lambda *a, **k: real(*a, **{**k, "deflation": deflation})  # noqa: E731
        try:
            results, _, log, _ = solve_overlaps(op, v, u_of, reused, names, solver=solver, rtol=args.rtol,
                                                chunks=chunks, recycle_vectors=keep)
        finally:
            if ritz:
                overlap._solve_chunk = real
        worst = max(float(np.max(np.abs(results[k]["overlap_matrix_chi"] - exact[n * k:n * (k + 1), :n])
                                 / np.sqrt(np.outer(np.diagonal(exact)[n * k:n * (k + 1)], np.diagonal(exact)[:n]))))
                    for k in range(1, len(names)))
        flagged = int(sum(np.sum(results[k]["error_bound_u"] / results[k]["chi_uu"] > args.rtol)
                          for k in range(1, len(names))))
        rows[label] = {"ggn_products": int(op.products), "per_chunk": [int(c["ggn_products"]) for c in log],
                       "deflation_vectors": [c.get("deflation_vectors") for c in log],
                       "recycled_vectors": log[0].get("recycled_vectors"), "max_error_vs_exact": worst,
                       "flagged": flagged}
        print(f"{label:50s} {op.products:7d} products {rows[label]['per_chunk']}  error vs exact {worst:.1e}", flush=True)
    _deflation.RITZ_FLOOR = 10.0
    entry = {"benchmark": "overlap_levers --recycling", "run": args.run, "samples": n, "group": args.group,
             "damping": lam, "rtol": args.rtol, "stored_vectors": 16, "rhs_chunk": 8, "variants": rows,
             "excludes": "building the dense replica (cached); products are counted exactly, no model is evaluated",
             "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    path = Path(args.record)
    records = json.loads(path.read_text()) if path.exists() else []
    key = lambda r: (r["benchmark"], r["run"], r["samples"], r["group"], r["damping"], r["rtol"])  # noqa: E731
    records = [r for r in records if key({"benchmark": "overlap_levers", **r}) != key(entry)] + [entry]
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(records, indent=2) + "\n")
    tmp.replace(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
