"""Image-text SogCLR + GloFND on CC3M: FastCLIP-v1 (constant temperature 0.07), ResNet-50.

The recipe of cc3m_fastclip_glofnd.py with the temperature held constant (no temperature
learning rate), GloFND alpha 5e-4, thresholds learned and applied from epoch 15. Run:

  glofnd-jax train --config configs/cc3m_sogclr_glofnd.py --workdir workdir/cc3m_sogclr \
    --config.data.train_shards='/data/cc3m/train/{00000..00331}.tar' \
    --config.tokenizer.path=/data/cc3m/tokenizer.json
"""

import pathlib

from glofnd_jax.config.common import load_config_file


def get_config():
  c = load_config_file(pathlib.Path(__file__).with_name("cc3m_fastclip_glofnd.py"))
  c.loss.version = "v1"
  c.glofnd.alpha = 5e-4
  c.glofnd.start_update_epoch = 15
  c.glofnd.start_mask_epoch = 15
  return c
