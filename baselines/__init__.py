"""What the toolkit compares against and did not invent, installed as
``convex_attention.baselines``:

* :mod:`.attributions`: the post-hoc explanation methods (GradCAM, DeepLIFT, LRP,
  Input×Gradient, Integrated Gradients, through captum);
* :mod:`.paper_loss`: the consistency loss as the paper's public code computes it (with
  its batch-wide normalisation);
* :mod:`.linsat`: LinSATNet's Sinkhorn projection onto fixed marginals, on the problem with
  given maps (one scored map held to given coarsenings), for the graph benchmark.

The plain CNN the experiment compares with lives with the experiment's models
(:mod:`convex_attention.paper.models.plain_cnn`).  This package depends only on the core
and the shared floor (:mod:`convex_attention.io`); the experiment imports it, never the
reverse.
"""
