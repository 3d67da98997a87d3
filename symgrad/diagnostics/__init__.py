"""Diagnostics: forward equivariance errors and gradient overlaps across group orbits."""
