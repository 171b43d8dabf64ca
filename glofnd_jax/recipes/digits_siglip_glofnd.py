"""The image-text default with SigLIP: the digits-captions recipe, sigmoid loss + GloFND.

Everything as ``configs/digits_clip_glofnd.py`` (data, towers, 40 epochs, GloFND alpha 0.05 from
epoch 10) except the loss: SigLIP's pairwise sigmoid loss with a learnable logit scale from 10
(temperature 0.1) and bias from -10, trained at the network's learning rate; flagged negatives
are removed from the sum. ``--config.loss.impl=ring`` passes text chunks around the devices
instead of all-gathering them (same numbers). Run:

  glofnd-jax train --config configs/digits_siglip_glofnd.py --workdir workdir/digits_siglip
"""

import pathlib

from glofnd_jax.config import image_text as image_text_config


def get_config():
  return image_text_config.siglip_recipe(
      pathlib.Path(__file__).with_name("digits_clip_glofnd.py"), impl="dense")
