"""POLICIES: the one table of policy names -> policy classes (``decide``, the pool, the
Kubernetes extender and the trace benchmark look names up here, nowhere else).

Pure: imports only the policy modules.
"""
from __future__ import annotations

from .fgd import FGD, FGDExact, Flexai
from .policies import BestFit, DotProduct, FirstFit, GpuPacking, Policy, RandomFit

__all__ = ["DEFAULT_POLICY", "POLICIES"]

#: name -> class; each class's ``name`` attribute is its key.
POLICIES: dict[str, type[Policy]] = {
    cls.name: cls for cls in (FirstFit, BestFit, DotProduct, RandomFit, GpuPacking, FGD, FGDExact,
                                  Flexai)
}
#: The policy ``decide`` uses when none is named.
DEFAULT_POLICY = "flexai"
