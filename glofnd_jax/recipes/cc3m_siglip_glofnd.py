"""SigLIP + GloFND on CC3M (ResNet-50, 37 epochs, batch 1024), the ring over the devices.

The towers, data, optimiser and GloFND settings of ``configs/cc3m_fastclip_glofnd.py`` (alpha
1e-3, lambda lr 0.05, thresholds learned and applied from epoch 20), with SigLIP's sigmoid loss:
logit scale from 10 and bias from -10, learned at the network's learning rate, flagged negatives
removed. ``loss.impl = ring``: each device holds one (B/D, B/D) block of similarities at a time,
so the loss's memory per device does not grow with the global batch. CC12M: point the shards
there. Run (see docs/BIMODAL.md for the data):

  glofnd-jax train --config configs/cc3m_siglip_glofnd.py --workdir workdir/cc3m_siglip \
    --config.data.train_shards='/data/cc3m/train/{00000..00331}.tar' \
    --config.data.test_shards='/data/cc3m/val/{00000..00001}.tar' \
    --config.tokenizer.path=/data/cc3m/tokenizer.json
"""

import pathlib

from glofnd_jax.config import image_text as image_text_config


def get_config():
  return image_text_config.siglip_recipe(
      pathlib.Path(__file__).with_name("cc3m_fastclip_glofnd.py"), impl="ring")
