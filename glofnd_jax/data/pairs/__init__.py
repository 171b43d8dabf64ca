"""Image-caption pairs: sources, the bad-sample screen, and the grain pipeline that batches them.

Modules, each importing only those listed above it:

* :mod:`~glofnd_jax.data.pairs.contract`        the pair-source protocol and the index contract
  (a sample's key is its global index; :func:`check_keys`; :class:`PairSubset`).
* :mod:`~glofnd_jax.data.pairs.integrity`       damaged shards: a tar cut short or unreadable,
  a shard that lost samples against its manifest or the run's first index.
* :mod:`~glofnd_jax.data.pairs.shards`          the webdataset tar format: shard lists, one
  shard's index (cached, damage included), :class:`ShardWriter`, :func:`iterate_samples`.
* :mod:`~glofnd_jax.data.pairs.webdataset`      :class:`WebDatasetPairSource`: shards read by
  random access.
* :mod:`~glofnd_jax.data.pairs.arrayrecord`     our ArrayRecord image-caption format.
* :mod:`~glofnd_jax.data.pairs.tfds`            a prepared TFDS image-text dataset.
* :mod:`~glofnd_jax.data.pairs.screening`       bad samples (empty caption, undecodable image)
  found once before training, then skipped or fatal.
* :mod:`~glofnd_jax.data.pairs.shard_tools`     validate a shard set against the contract,
  re-key it (``glofnd-jax validate-shards`` / ``rekey-shards``).
* :mod:`~glofnd_jax.data.pairs.pipeline`        decode + tokenise + batch, per process,
  checkpointable (:func:`make_pair_iterator`).
* :mod:`~glofnd_jax.data.pairs.digits_captions` the embedded default: the digits with template
  captions, written once as webdataset shards.
* :mod:`~glofnd_jax.data.pairs.registry`        dataset name -> source (:func:`open_pair_source`).

Every source (:class:`~glofnd_jax.data.pairs.contract.PairSource`) serves ``source[i]`` =
``{'image': encoded bytes or uint8 array, 'caption': str, 'label': int, 'key': int}`` and
exposes per-position ``keys`` and ``labels``, ``data_size`` (max key + 1), ``has_labels``,
``read_caption(i)``, ``read_image(i)``, ``describe(i)`` and ``fingerprint()``.

This package index imports nothing: import the module that holds what you need.
"""
