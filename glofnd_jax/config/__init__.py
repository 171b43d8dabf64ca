"""Training configs (ml_collections): one schema per task, built on shared sections.

* :mod:`~glofnd_jax.config.common`      the ``glofnd`` section, field checks, known-key check,
  loading a config file by path.
* :mod:`~glofnd_jax.config.unimodal`    ``task = "unimodal"``: SogCLR/SimCLR on images.
* :mod:`~glofnd_jax.config.image_text`  ``task = "clip"``: FastCLIP on image-text pairs.
"""
