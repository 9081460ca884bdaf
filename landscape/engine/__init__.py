"""The evaluation engine: the model the hot loop runs and how it moves to a grid point.

- `build`: EngineOptions -> Engine (the model, its setter, an EngineReport), every rewrite proven
  exact and checked against plain evaluation (`prepare_engine`);
- `fold`: BatchNorm folding and conv + activation fusion, from a captured graph;
- `hardware`: what runs natively (bf16, fp16, TF32), and the precision to use;
- `evaluate`: the hot loop over resident data (`Evaluator`, `PointSetter`, bf16 storage);
- `multipoint`: K grid points per launch (vmap); `stream`: data read in batches once per block of
  points; `bn`: BatchNorm statistics re-estimated at every point; `threads`: CPU threads.
"""

from landscape.engine.build import (CHECK_RTOL, Engine, EngineOptions, EngineReport, batch_statistics_layers,
                                    compile_refusal, prepare_engine)

__all__ = ["CHECK_RTOL", "Engine", "EngineOptions", "EngineReport", "batch_statistics_layers", "compile_refusal",
           "prepare_engine"]
