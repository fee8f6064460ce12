"""Tolerances derived from what a test compares, never from the machine it runs on.

Two fp32 computations of the same function that differ only in reduction order
(another mesh, another CPU's vector width, a cached vs a full forward) agree to
about eps32 * sqrt(n) of the magnitudes summed, per reduction of n terms, and
such errors add up through the layers. `fp32_atol` turns that into an absolute
tolerance with a safety factor of 8; a real bug (a wrong mask, a wrong shard)
moves results by O(1), far outside it.
"""

import numpy as np

EPS32 = float(np.finfo(np.float32).eps)


def fp32_atol(reference, reduction: int, depth: int = 1, safety: float = 8.0) -> float:
  """Reduction-order tolerance for `reference`: reductions of `reduction` terms, `depth` deep."""
  scale = max(float(np.max(np.abs(np.asarray(reference, np.float64)))), 1e-30)
  return safety * EPS32 * np.sqrt(reduction) * depth * scale


def adam_drift_bound(lr_schedule, steps: int) -> float:
  """How far two Adam runs fed slightly different gradients can drift apart, per element.

  A bias-corrected Adam step moves each element by at most about lr (exactly lr * sign(g)
  on the first step, where a gradient at fp32 noise level still moves the parameter a full
  lr); two runs can therefore differ by up to 2 * sum of lr over the steps, plus slack for
  weight decay.
  """
  return 2.2 * sum(float(lr_schedule(s)) for s in range(steps))
