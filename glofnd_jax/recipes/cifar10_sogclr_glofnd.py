"""SogCLR + GloFND on CIFAR-10 with a ResNet-18 (CIFAR stem).

Needs CIFAR-10 prepared as a TFDS ArrayRecord dataset in ``data.data_dir`` (no download at run
time): ``tfds build cifar10 --file_format=array_record --data_dir=DIR``. Run:

  glofnd-jax train --config configs/cifar10_sogclr_glofnd.py --workdir workdir/cifar10 \
      --config.data.data_dir=DIR
"""

from glofnd_jax.config import unimodal as unimodal_config


def get_config():
  c = unimodal_config.base_config()
  c.data.name = "tfds:cifar10"
  c.data.val_split = ""  # hold out eval.val_fraction of train for probe model selection
  c.data.image_size = 32
  c.data.channels = 3
  c.augment.kind = "simclr"
  c.augment.crop_size = 32
  c.augment.blur_prob = 0.0  # SimCLR: no blur on CIFAR
  c.augment.jitter_strength = 0.5
  c.augment.mean = (0.4914, 0.4822, 0.4465)
  c.augment.std = (0.2470, 0.2435, 0.2616)
  c.model.name = "resnet18"
  c.batch_size = 256
  c.epochs = 400
  c.loss.temperature = 0.2
  c.glofnd.start_update_epoch = 150
  c.glofnd.start_mask_epoch = 150
  c.log_every_steps = 50
  c.checkpoint_every_steps = 2000
  return c
