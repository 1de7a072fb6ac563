"""The search: what it samples, what it adds, when it stops, what it returns, and its driver on Ray Tune.

``space`` (space files to Optuna), ``baselines`` and ``refine`` (trials the search adds), ``stopping`` (early
stopping, time budgets), ``launchconfig`` (one launch's options), ``pareto`` (the front and the pick rules),
``dense_start`` and ``preflight`` (before the trials), ``progress`` (live lines), ``raytune`` (the only place
that imports Ray).
"""
