"""Run the IOOS compliance checker's ``cf:1.8`` on netCDF files and print, as JSON, each
file's ``[errors, warnings]``: its high- and medium-priority failures, each as "section:
message"; a check that crashed is an error (but the one in :data:`MONOTONICITY`, made here
instead).

``python tests/cf_check.py FILE ...``. The tests run it in a subprocess: the checker loads
C and C++ libraries of its own (PROJ, GEOS, udunits2, a second libcurl) that have no place
in the process where the rest of the suite compiles JAX programs.
"""

import json
import sys
import warnings

import numpy as np

CHECKER = "cf:1.8"
# The checker (6.1) crashes in this check on string-valued coordinate variables (element,
# stat, model) instead of judging them; findings() makes the check itself then.
MONOTONICITY = "check_coordinate_variables_strict_monotonicity"


def _monotonicity_errors(path) -> list[str]:
    import netCDF4

    errors = []
    with netCDF4.Dataset(path) as nc:
        for name, var in nc.variables.items():
            if var.dimensions == (name,) and var.dtype != str and var.dtype.kind in "iuf" and var.size > 1:
                step = np.diff(np.asarray(var[:], dtype=np.float64))
                if not (np.all(step > 0) or np.all(step < 0)):
                    errors.append(f"coordinate variable {name} is not strictly monotonic")
    return errors


def findings(path) -> tuple[list[str], list[str]]:
    from compliance_checker import runner

    suite = runner.CheckSuite()  # a new one per file: the checkers cache what they found by the dataset's text
    suite.load_all_available_checkers()
    ds = suite.load_dataset(str(path))
    try:
        groups, crashed = suite.run_all(ds, [CHECKER], skip_checks=[])[CHECKER]
    finally:
        ds.close()
    found = suite.build_structure(CHECKER, groups, str(path), limit=2)
    errors, warns = ([f"{r.name}: {m}" for r in found[key] if r.value[0] < r.value[1] for m in r.msgs]
                     for key in ("high_priorities", "medium_priorities"))
    for check, (exc, _) in crashed.items():
        if check == MONOTONICITY and isinstance(exc, TypeError):
            errors += _monotonicity_errors(path)
        else:
            errors.append(f"the check {check} crashed: {exc!r}")
    return errors, warns


if __name__ == "__main__":
    # The checker registers every plugin it has, the deprecated ioos_sos one among them.
    warnings.filterwarnings("ignore", "The ioos_sos checker is deprecated", DeprecationWarning)
    json.dump({path: findings(path) for path in sys.argv[1:]}, sys.stdout)
