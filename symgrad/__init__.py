"""symgrad: symmetry diagnostics for neural PDE surrogates of 2-D compressible Euler flow."""

__version__ = "0.1.0"

from symgrad.errors import SymgradError

__all__ = ["SymgradError", "__version__"]
