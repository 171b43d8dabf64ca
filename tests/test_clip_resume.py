"""Resuming a clip run keeps the learned thresholds, or resets them with
``glofnd.reset_lambda_on_resume`` (training resumes only; ``glofnd-jax eval`` never resets)."""

import jax
import numpy as np

from glofnd_jax import thresholds
from glofnd_jax.training import image_text as image_text_task
from glofnd_jax.training import loop


def _lam(state):
  """Image-anchor lambda and text-anchor Adam first moments."""
  return (np.asarray(jax.device_get(state.per_sample.thresholds_img[0].lam)),
          np.asarray(jax.device_get(thresholds.moments(state.per_sample.thresholds_txt[0]).mu)))


def test_resume_keeps_or_resets_the_thresholds(tmp_path, caption_shards, tiny_image_text):
  shards = caption_shards(tmp_path / "shards", 8, 1)
  config = tiny_image_text("digits_clip_glofnd", shards)
  config.glofnd.start_update_epoch = config.glofnd.start_mask_epoch = 0
  workdir = tmp_path / "run"
  loop.train_and_evaluate(config, workdir, evaluate=False, stop_after_steps=6)

  run = image_text_task.ClipRun(config, workdir)
  target = run.init_state()
  fresh_lam, fresh_m = _lam(target)
  checkpointer = run.checkpointer()
  kept, step = checkpointer.restore(target, run.iterator())
  checkpointer.close()
  assert step == 6
  lam, m = _lam(kept)
  keys = run.source.keys
  assert not np.allclose(lam[keys], fresh_lam[keys]) and np.abs(m[keys]).max() > 0

  config.glofnd.reset_lambda_on_resume = True
  run = image_text_task.ClipRun(config, workdir)
  checkpointer = run.checkpointer()
  reset, _ = checkpointer.restore(target, run.iterator())
  # `glofnd-jax eval` restores without the data iterator: the learned thresholds stay.
  evaluated, _ = checkpointer.restore(target)
  checkpointer.close()
  lam_reset, m_reset = _lam(reset)
  np.testing.assert_array_equal(lam_reset, fresh_lam)
  np.testing.assert_array_equal(m_reset, fresh_m)
  np.testing.assert_array_equal(_lam(evaluated)[0], lam)
  # u and the network are restored either way.
  for a, b in ((reset.per_sample.loss[0].u_img, kept.per_sample.loss[0].u_img),
               (reset.params["logit_scale"], kept.params["logit_scale"])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
