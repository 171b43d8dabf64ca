"""The paper's unimodal recipe: SogCLR + GloFND on ImageNet-100 with a ResNet-50.

ResNet-50 (ImageNet stem), 200 epochs, global batch 128, LARS lr 0.075 with sqrt scaling
(0.075 * sqrt(128)), 10 warmup epochs, weight decay 1e-6, T 0.1, gamma 0.9, alpha 0.01, lambda
lr 0.05, GloFND from epoch 70. Needs TFDS ``imagenet2012`` prepared in ArrayRecord format in
``data.data_dir``; the 100 classes are those of ``glofnd_jax/data_files/imagenet100_classes.txt``.

Augmentations, per view, the authors' torchvision recipe (GloFND ``unimodal/train.py``, the same
as SogCLR's ``train.py``): ``RandomResizedCrop(224, scale=(0.08, 1))`` of the whole image,
``RandomApply([ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8)``, ``RandomGrayscale(0.2)``,
``RandomApply([GaussianBlur(sigma in [0.1, 2])], p=1.0)``, ``RandomHorizontalFlip()``. The crop
is cut on the host from the original image (``data.host_crop``), both views from one decode; the
rest runs on the accelerator. Evaluation: resize 256 (shorter side), centre crop 224.
``tests/test_input_pipeline.py`` checks this table against the recipe the config builds:

  | field | value |
  | crop_size | 224 |
  | crop_scale | (0.08, 1.0) |
  | crop_ratio | (3 / 4, 4 / 3) |
  | jitter_prob | 0.8 |
  | brightness | 0.4 |
  | contrast | 0.4 |
  | saturation | 0.2 |
  | hue | 0.1 |
  | grayscale_prob | 0.2 |
  | blur_prob | 1.0 |
  | blur_sigma | (0.1, 2.0) |
  | flip_prob | 0.5 |
  | solarize_prob | 0.0 |
  | mean | (0.485, 0.456, 0.406) |
  | std | (0.229, 0.224, 0.225) |

  glofnd-jax train --config configs/imagenet100_sogclr_glofnd.py --workdir /mnt/shared/run \
      --config.data.data_dir=gs://BUCKET/tfds
"""

from glofnd_jax.config import unimodal as unimodal_config


def get_config():
  c = unimodal_config.base_config()
  c.data.name = "imagenet100"
  c.data.val_split = ""  # hold out eval.val_fraction of train for probe model selection
  c.data.test_split = "validation"
  c.data.image_size = 256  # evaluation: shorter side resized to 256, centre crop 224
  c.data.channels = 3
  c.data.host_crop = True  # training: two 224 crops of the original image, cut on the host
  c.augment.kind = "simclr"
  c.augment.crop_size = 224
  c.model.name = "resnet50"
  c.model.stem = "imagenet"
  c.model.proj_hidden_dim = 2048
  c.model.dtype = "bfloat16"
  c.epochs = 200
  c.glofnd.start_update_epoch = 70
  c.glofnd.start_mask_epoch = 70
  c.log_every_steps = 100
  c.checkpoint_every_steps = 2000
  c.eval.probe_fractions = (1.0, 0.1, 0.01, 0.001)
  c.eval.batch_size = 512
  return c
