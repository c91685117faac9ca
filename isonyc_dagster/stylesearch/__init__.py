"""Style search over the offline pixel-art backend's ``StyleParams``.

Phases: synthetic pairs from the renderer API (``data``), an inverse CNN image → parameters (``model``, torch,
imported lazily), validation and CMA-ES fitting to target images (``fit``), and judged exploration with a seed
pool (``explore``, ``judge``). See ``isonyc style --help`` and docs/ARCHITECTURE.md.
"""
