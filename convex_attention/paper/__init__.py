"""The paper's experiment: an attention CNN trained on weakly annotated images, its data,
training, explanations and their metrics, the protocol and the experiment driver.

Its settings are declared once in :mod:`.config`; its models (the attention CNN and the
plain CNN it is compared with) and their checkpoints in :mod:`.models`; the reports in
:mod:`.reports`.  It builds on the core (:mod:`convex_attention`), the shared floor
(:mod:`convex_attention.io`: files, figures, settings) and the baselines it compares
with (:mod:`convex_attention.baselines`); nothing in the core, the floor, the harness or
the baselines imports it.  Its extra dependencies (captum, scikit-learn, nibabel, pillow)
come with ``pip install 'convex-attention[paper]'``.
"""
