"""SogCLR + GloFND on the embedded glyphs: 62 classes of letters and digits (no download).

Rendered on first use from matplotlib's fonts (glofnd_jax/data/glyphs.py): 16x16 greyscale,
train/val/test 39,680 / 4,960 / 9,920, with near-duplicate classes (o/O/0, l/I/1, s/S, ...), so
neither kNN nor the probes saturate. A small CNN, about ten minutes on a 2-core CPU. Run:

  glofnd-jax train --config configs/glyphs_sogclr_glofnd.py --workdir workdir/glyphs
"""

from glofnd_jax.config import unimodal as unimodal_config


def get_config():
  c = unimodal_config.base_config()
  c.data.name = "glyphs"
  c.data.image_size = 16
  c.model.proj_dim = 64
  c.model.proj_hidden_dim = 256
  c.batch_size = 256
  c.epochs = 2
  c.loss.temperature = 0.2
  c.glofnd.alpha = 0.02
  c.glofnd.start_update_epoch = 1
  c.glofnd.start_mask_epoch = 1
  c.optim.warmup_epochs = 1
  c.lambda_snapshot_every_epochs = 1
  c.eval.knn_k = 20
  # The 100 % probe (lbfgs on 40k x 256, 62 classes, 4 values of C) would outlast training.
  c.eval.probe_fractions = (0.1, 0.01)
  return c
