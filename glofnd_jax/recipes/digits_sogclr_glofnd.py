"""The default: SogCLR + GloFND on scikit-learn's embedded handwritten digits (no download).

1797 8x8 images, 10 classes (train/val/test 1258/180/359), a small CNN, about a minute or two
of training on a 2-core CPU. Run:

  glofnd-jax train --config configs/digits_sogclr_glofnd.py --workdir workdir/digits
"""

from glofnd_jax.config import unimodal as unimodal_config


def get_config():
  c = unimodal_config.base_config()
  c.model.proj_dim = 64
  c.model.proj_hidden_dim = 256
  c.epochs = 60
  c.loss.temperature = 0.2
  c.glofnd.alpha = 0.05
  c.glofnd.start_update_epoch = 20
  c.glofnd.start_mask_epoch = 20
  c.optim.warmup_epochs = 5
  c.log_every_steps = 9
  c.checkpoint_every_steps = 270
  c.eval.knn_k = 20
  c.eval.probe_fractions = (1.0, 0.1, 0.02)
  return c
