"""A search on disk: the run directory, its ``run.json`` and lock, and the Optuna study that is its ledger.

``directory`` (run.json, the lock, the frozen space), ``ledger`` (recording outcomes, reading records back),
``_storage`` and ``_urls`` (where the study lives), ``interrupted`` (what ``resume`` puts right first). The names of
a run directory's entries are ``io._layout``'s, so that no output a user names can overwrite one.
"""
