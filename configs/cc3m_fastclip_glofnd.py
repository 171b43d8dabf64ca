"""The paper's image-text recipe: FastCLIP-v3 + GloFND on CC3M (ResNet-50, 37 epochs, batch 1024).

CLIP's modified ResNet-50 and 12-layer text transformer (embed 1024), AdamW lr 1e-3, weight
decay 0.1, 10,000 warmup steps then cosine; a learnable temperature from 0.07 with its own
learning rate 2e-4 (x 1/3 once it reaches 0.03), rho 6.5, gamma from 1 to 0.2 over 18 epochs;
GloFND alpha 1e-3, lambda lr 0.05 (Adam eps 1e-14, as FastCLIP passes its eps), thresholds
learned and applied from epoch 20. Data: CC3M as webdataset shards whose json carries each
sample's key (check with `glofnd-jax validate-shards`, add keys with `glofnd-jax rekey-shards`).
Run (see docs/BIMODAL.md):

  glofnd-jax train --config configs/cc3m_fastclip_glofnd.py --workdir workdir/cc3m_fastclip \
    --config.data.train_shards='/data/cc3m/train/{00000..00331}.tar' \
    --config.data.test_shards='/data/cc3m/val/{00000..00001}.tar' \
    --config.tokenizer.path=/data/cc3m/tokenizer.json
"""

from glofnd_jax.config import image_text as image_text_config


def get_config():
  c = image_text_config.clip_base_config()
  c.batch_size = 1024
  c.epochs = 37
  c.log_every_steps = 100
  c.checkpoint_every_steps = 2000
  c.lambda_snapshot_every_epochs = 1

  c.data.name = "webdataset"
  c.data.train_shards = ""     # set on the command line (see above)
  c.data.test_shards = ""      # the CC3M validation pairs: retrieval (skipped when unset)
  c.data.test_split = "validation"
  c.data.image_size = 224
  c.data.channels = 3
  c.data.read_threads = 8
  c.data.index_workers = 16

  c.model.name = "RN50"
  c.model.image_tower = "modified_resnet"
  c.model.resnet_layers = (3, 4, 6, 3)
  c.model.vision_width = 64
  c.model.embed_dim = 1024
  c.model.text_width = 512
  c.model.text_layers = 12
  c.model.text_heads = 8

  c.loss.version = "v3"
  c.loss.temperature = 0.07
  c.loss.rho = 6.5
  c.loss.gamma_min = 0.2
  c.loss.gamma_decay_epochs = 18

  c.glofnd.mode = "glofnd"
  c.glofnd.alpha = 1e-3
  c.glofnd.lr = 0.05
  c.glofnd.eps = 1e-14
  c.glofnd.start_update_epoch = 20
  c.glofnd.start_mask_epoch = 20

  c.optim.lr = 1e-3
  c.optim.warmup_steps = 10000
  c.optim.weight_decay = 0.1
  c.optim.b1, c.optim.b2, c.optim.eps = 0.9, 0.999, 1e-8  # CLIP's ResNet settings
  c.optim.lr_tau = 2e-4
  c.optim.temperature_schedule = "step_thresh"
  return c
