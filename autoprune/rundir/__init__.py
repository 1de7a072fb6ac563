"""A search on disk: the run directory, its ``run.json`` and lock, and the Optuna study that is its ledger.

``directory`` (run.json, the lock, the frozen space), ``ledger`` (recording outcomes, reading records back),
``_storage`` and ``_urls`` (where the study lives), ``interrupted`` (what ``resume`` puts right first).
"""
