"""The training stack around the functional core: tasks, the jitted step, the loop, outputs.

* :mod:`~glofnd_jax.training.task`        what every task provides to the loop.
* :mod:`~glofnd_jax.training.unimodal`    images: SogCLR/SimCLR + GloFND.
* :mod:`~glofnd_jax.training.image_text`  image-text pairs: FastCLIP + GloFND.
* :mod:`~glofnd_jax.training.step`        ``TrainState`` and the pure jitted train steps.
* :mod:`~glofnd_jax.training.nonfinite`   the non-finite policy (stop, skip, off).
* :mod:`~glofnd_jax.training.loop`        ``train_and_evaluate``: restore-or-init, steps, saves.
* :mod:`~glofnd_jax.training.checkpoint`  orbax checkpoints of train state + data position.
* :mod:`~glofnd_jax.training.preemption`  SIGTERM / TPU preemption: save at a step boundary.
* :mod:`~glofnd_jax.training.optim`       network optimisers and schedules (both recipes).
* :mod:`~glofnd_jax.training.metrics`     ``metrics.jsonl`` + TensorBoard writer.
* :mod:`~glofnd_jax.training.plots`       PNG plots of a run.
"""
