"""The paper's image-text recipe: FastCLIP-v3 + GloFND on CC3M (ResNet-50, 37 epochs, batch 1024).

CLIP's modified ResNet-50 and 12-layer text transformer (embed 1024), AdamW lr 1e-3, weight
decay 0.1, 10,000 warmup steps then cosine; a learnable temperature from 0.07 with its own
learning rate 2e-4 (x 1/3 once it reaches 0.03), rho 6.5, gamma from 1 to 0.2 over 18 epochs;
GloFND alpha 1e-3, lambda lr 0.05 (Adam eps 1e-14, as FastCLIP passes its eps), thresholds
learned and applied from epoch 20. Data: CC3M as webdataset shards whose json carries each
sample's key (check with `glofnd-jax validate-shards`, add keys with `glofnd-jax rekey-shards`).
The schema's defaults (glofnd_jax/config/image_text.py) are this recipe; the file sets only the data.
Run (see docs/BIMODAL.md):

  glofnd-jax train --config configs/cc3m_fastclip_glofnd.py --workdir workdir/cc3m_fastclip \
    --config.data.train_shards='/data/cc3m/train/{00000..00331}.tar' \
    --config.data.test_shards='/data/cc3m/val/{00000..00001}.tar' \
    --config.tokenizer.path=/data/cc3m/tokenizer.json
"""

from glofnd_jax.config import image_text as image_text_config


def get_config():
  c = image_text_config.clip_base_config()
  c.data.test_split = "validation"
  c.data.read_threads = 8
  c.data.index_workers = 16
  return c
