"""SogCLR + GloFND on CIFAR-10 with a ResNet-18 (CIFAR stem).

Needs CIFAR-10 prepared as a TFDS ArrayRecord dataset in ``data.data_dir`` (no download at run
time): ``tfds build cifar10 --file_format=array_record --data_dir=DIR``. Run:

  glofnd-jax train --config configs/cifar10_sogclr_glofnd.py --workdir workdir/cifar10 \
      --config.data.data_dir=DIR

Augmentations: SogCLR's CIFAR recipe (its TF code, ``code/data_util.py``, SimCLR's CIFAR
settings): random resized crop (area (0.08, 1), ratio (3/4, 4/3)), flip 0.5, colour jitter of
strength 0.5 (SimCLR's 0.8 s, 0.8 s, 0.8 s, 0.2 s = 0.4, 0.4, 0.4, 0.1) with probability 0.8,
greyscale 0.2, no blur. The 32x32 images are stored at their size, so the crop runs on device.
``tests/test_input_pipeline.py`` checks this table against the recipe the config builds:

  | field | value |
  | crop_size | 32 |
  | crop_scale | (0.08, 1.0) |
  | crop_ratio | (3 / 4, 4 / 3) |
  | jitter_prob | 0.8 |
  | brightness | 0.4 |
  | contrast | 0.4 |
  | saturation | 0.4 |
  | hue | 0.1 |
  | grayscale_prob | 0.2 |
  | blur_prob | 0.0 |
  | flip_prob | 0.5 |
  | solarize_prob | 0.0 |
  | mean | (0.4914, 0.4822, 0.4465) |
  | std | (0.2470, 0.2435, 0.2616) |
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
  c.augment.blur_prob = 0.0  # SogCLR / SimCLR: no blur on CIFAR
  c.augment.saturation = 0.4  # SimCLR colour strength 0.5: (0.4, 0.4, 0.4, 0.1)
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
