"""Everything that crosses the boundary, checked: datasets and models in, model files out, paths, trust.

``data`` and ``idx`` (datasets), ``models`` (factories and prunable layers), ``export`` (model files that load
without unpickling), ``preprocess`` (the inputs a model expects), ``_paths`` and ``_layout`` (files users name; a
run directory's own entries), ``_trust`` and ``_imports`` (code named in files), ``_io`` (atomic writes). The limits
on what input may ask are ``autoprune._bounds``'.
"""
