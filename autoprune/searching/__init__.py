"""What a search does, without Ray: what it samples, what it adds, when it stops, what it returns.

``space`` (space files to Optuna), ``baselines`` and ``refine`` (trials the search adds), ``stopping`` (early
stopping, time budgets), ``launchconfig`` (one launch's options), ``pareto`` (the front and the pick rules),
``dense_start`` and ``preflight`` (before the trials), ``_attrs`` (the names of its facts in the study),
``progress`` (live lines). ``autoprune.raytune`` runs it on Ray Tune.
"""
