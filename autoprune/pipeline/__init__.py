"""One trial, in plain PyTorch and without Ray: sparse training, pruning, masked finetuning, evaluation.

``trial`` (``run_trial``, its phases; its settings are ``autoprune.config``'s), ``train`` (the SGD loop), ``sparsity``
(regularizers, clipping, distillation), ``speed`` and ``measure`` (latency, MACs), ``result`` (what a trial
measured and produced). Which weights go is ``autoprune.pruning``'s.
"""
