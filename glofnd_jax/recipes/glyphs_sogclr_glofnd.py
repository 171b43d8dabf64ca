"""SogCLR + GloFND on the embedded glyphs: 62 classes of letters and digits (no download).

Rendered on first use from matplotlib's fonts (glofnd_jax/data/glyphs.py): 16x16 greyscale,
train/val/test 39,680 / 4,960 / 9,920, with near-duplicate classes (o/O/0, l/I/1, s/S, ...), so
neither kNN nor the probes saturate. The small CNN, projection, temperature and kNN of
configs/digits_sogclr_glofnd.py; this file sets what differs: the data, a larger batch over two
epochs, alpha 0.02 from epoch 1. About ten minutes on a 2-core CPU. Run:

  glofnd-jax train --config configs/glyphs_sogclr_glofnd.py --workdir workdir/glyphs
"""

import pathlib

from glofnd_jax.config.common import load_config_file


def get_config():
  c = load_config_file(pathlib.Path(__file__).with_name("digits_sogclr_glofnd.py"))
  c.data.name, c.data.image_size = "glyphs", 16
  c.batch_size, c.epochs = 256, 2
  c.glofnd.alpha = 0.02
  c.glofnd.start_update_epoch = c.glofnd.start_mask_epoch = 1
  c.optim.warmup_epochs = 1
  # 155 steps an epoch: the schema's log and checkpoint intervals, lambda snapshots every epoch.
  c.log_every_steps, c.checkpoint_every_steps = 20, 500
  c.lambda_snapshot_every_epochs = 1
  # The 100 % probe (lbfgs on 40k x 256, 62 classes, 4 values of C) would outlast training.
  c.eval.probe_fractions = (0.1, 0.01)
  return c
