"""The image-text default with SigLIP: the digits-captions recipe, sigmoid loss + GloFND.

Everything as ``configs/digits_clip_glofnd.py`` (data, towers, 40 epochs, GloFND alpha 0.05 from
epoch 10) except the loss: SigLIP's pairwise sigmoid loss with a learnable logit scale from 10
(temperature 0.1) and bias from -10, trained at the network's learning rate; flagged negatives
are removed from the sum. ``--config.loss.impl=ring`` passes text chunks around the devices
instead of all-gathering them (same numbers). Run:

  glofnd-jax train --config configs/digits_siglip_glofnd.py --workdir workdir/digits_siglip
"""

import importlib.util
import pathlib


def _digits_clip():
  path = pathlib.Path(__file__).with_name("digits_clip_glofnd.py")
  spec = importlib.util.spec_from_file_location("digits_clip_glofnd", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def get_config():
  c = _digits_clip().get_config()
  c.loss.name = "siglip"
  c.loss.impl = "dense"
  c.loss.temperature = 0.1  # logit scale exp(t) = 10, as the paper
  c.optim.lr_tau = c.optim.lr
  c.optim.temperature_schedule = "const"
  return c
