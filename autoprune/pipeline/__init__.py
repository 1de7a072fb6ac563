"""One trial, in plain PyTorch and without Ray: sparse training, pruning, masked finetuning, evaluation.

``config`` (a trial's settings), ``trial`` (``run_trial``, its phases), ``train`` (the SGD loop), ``sparsity``
(regularizers, clipping, distillation), ``speed`` and ``measure`` (latency, MACs), ``result`` (what a trial
measured and produced). Which weights go is ``autoprune.pruning``'s.
"""
