"""Where a surface's model and data come from: checkpoints and the model registry (`checkpoint`),
data sets and input normalization (`data`), and the user's own files (`plugins`)."""
