"""The recipes installed with the package: ``glofnd-jax train --config NAME`` (``NAME.py`` here).

Each module is a config file whose ``get_config()`` returns the run's config. In a checkout,
``configs/`` is a link to this folder, so ``--config configs/NAME.py`` is the same recipe.
"""
