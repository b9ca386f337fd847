"""Probabilistic Face Embeddings (Shi & Jain, ICCV 2019): the uncertainty head and its training.

The backbone stays frozen and its unit embedding is the mean mu; a small head learns the
per-dimension variance sigma^2 from the backbone's pooled features, by minimising the negative
mutual likelihood score over genuine pairs.

* ``head``: :class:`~train.pfe.head.UncertaintyHead`, the MLS score and loss, the backbone + head
  network that ``export.onnx pfe`` writes as one graph;
* ``degrade``: seeded image degradations (blur, low resolution, JPEG, occlusion, noise, mixes);
* ``features``: frozen features of clean and degraded aligned chips, computed once and cached;
* ``train``: P x K training from the cache, checkpoint, loss curve and the sanity report.

Run ``facesdk train pfe --help``. Submodules are not imported here (runpy's double import).
"""
