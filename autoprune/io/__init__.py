"""Everything that crosses the boundary, checked: datasets and models in, model files out, paths, limits, trust.

``data`` and ``idx`` (datasets), ``models`` (factories and prunable layers), ``export`` (model files that load
without unpickling), ``preprocess`` (the inputs a model expects), ``_paths`` (files users name), ``_bounds``
(limits on what input may ask), ``_trust`` and ``_imports`` (code named in files), ``_io`` (atomic writes).
"""
