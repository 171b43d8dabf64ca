"""The image-text default: FastCLIP-v3 + GloFND on the digits paired with template captions.

The digits (1,258 train / 180 val / 359 test) each get a caption such as "a handwritten seven" or
"the digit 7 written by hand", written once as webdataset shards under the work directory and
read through the real shard reader; a BPE tokenizer is trained on the training captions on first
use. A small CNN image tower and a 2-layer text transformer train for 40 epochs (a few minutes
on a 2-core CPU); the run ends with zero-shot classification and retrieval on the held-out test
pairs, each printed next to its chance level. Run:

  glofnd-jax train --config configs/digits_clip_glofnd.py --workdir workdir/digits_clip
"""

from glofnd_jax.config import image_text as image_text_config
from glofnd_jax.data.pairs import digits_captions


def get_config():
  c = image_text_config.clip_base_config()
  c.batch_size = 128
  c.epochs = 40
  c.log_every_steps = 9
  c.checkpoint_every_steps = 180
  c.lambda_snapshot_every_epochs = 10

  c.data.name = "digits_captions"
  c.data.image_size = 8
  c.data.channels = 1
  c.data.read_threads = 1
  c.data.index_workers = 2
  c.augment.kind = "digits"

  c.tokenizer.context_length = 16  # the longest caption is 10 tokens with start and end
  c.tokenizer.vocab_size = 1000    # the captions stop the BPE well below this

  c.model.name = "small_cnn+text2"
  c.model.image_tower = "small_cnn"
  c.model.embed_dim = 64
  c.model.text_width = 64
  c.model.text_layers = 2
  c.model.text_heads = 4

  c.loss.gamma_decay_epochs = 10

  c.glofnd.alpha = 0.05
  c.glofnd.start_update_epoch = 10
  c.glofnd.start_mask_epoch = 10

  c.optim.lr = 2e-3
  c.optim.warmup_steps = 45

  c.eval.batch_size = 180
  c.eval.zeroshot_class_names = digits_captions.CLASS_NAMES
  c.eval.zeroshot_templates = digits_captions.ZERO_SHOT_TEMPLATES
  return c
