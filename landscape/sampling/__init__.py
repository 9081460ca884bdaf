"""Error bars and adaptive sampling: each grid point evaluated on as many samples as its figure needs.

- `adaptive`: the stopping rule, the common random (or stratified) sample order, `SampledMeasure`;
- `multilevel`: coarse to fine, finer points using their coarser neighbours as control variates;
- `validate`: the statistics that check the rule (coverage of the error bars, the stopping bias).
"""

from landscape.sampling.adaptive import SamplingPlan

__all__ = ["SamplingPlan"]
