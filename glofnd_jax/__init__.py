"""glofnd-jax: GloFND (Global False Negative Detection) for contrastive learning in JAX.

The functional API, in the order a train step uses it:

* :mod:`glofnd_jax.similarity`  cosine-similarity rows and negative masks, ``(R, B, C)``.
* :mod:`glofnd_jax.thresholds`  per-sample lambda, its quantile gradient and row-wise Adam.
* :mod:`glofnd_jax.detection`   keep-masks for every detection mode, diagnostics.
* :mod:`glofnd_jax.treatments`  what a loss does with flagged negatives: remove, attract, reweight.
* :mod:`glofnd_jax.losses`      SimCLR, SogCLR and FastCLIP v1/v3 with weighted negatives.
* :mod:`glofnd_jax.siglip`      SigLIP's sigmoid loss with GloFND, dense or as a device ring.
* :mod:`glofnd_jax.objectives`  detection + loss in one differentiable function.
* :mod:`glofnd_jax.per_sample`  gather/scatter of per-sample arrays by global index.
* :mod:`glofnd_jax.sharding`    the device mesh, batch and per-sample-state shardings.

Every module above is an attribute of the package (``gj.thresholds``, ``gj.sharding``, ...).
"""

import importlib

from glofnd_jax import (detection, losses, objectives, per_sample, siglip, similarity, thresholds,
                        treatments)

from glofnd_jax.detection import MODES, Detection, detect, keep_mask
from glofnd_jax.losses import (FastCLIPState, SimCLRState, SogCLRState, cosine_gamma,
                               fastclip_loss, init_fastclip, init_sogclr, siglip_loss, simclr_loss,
                               sogclr_loss)
from glofnd_jax.objectives import (BimodalConfig, BimodalState, ObjectiveAux, UnimodalConfig,
                                   UnimodalState, bimodal_objective, init_bimodal_state,
                                   init_unimodal_state, unimodal_objective)
from glofnd_jax.thresholds import (ThresholdConfig, ThresholdState, batch_quantile,
                                   init_thresholds, moments, threshold_grad, threshold_optimizer,
                                   update_thresholds, update_thresholds_from_counts)
from glofnd_jax.treatments import TREATMENTS, Treated, treat

__version__ = "0.1.0"

# Above the core (layer 1 in tests/test_layering.py), so imported on first access, not here.
_LAZY_SUBMODULES = ("sharding",)


def __getattr__(name):
  if name in _LAZY_SUBMODULES:
    return importlib.import_module(f"glofnd_jax.{name}")
  raise AttributeError(f"module 'glofnd_jax' has no attribute {name!r}")
