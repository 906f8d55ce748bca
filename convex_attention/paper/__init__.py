"""The paper's experiment: an attention CNN trained on weakly annotated images, its data,
training, explanations and their metrics, and the experiment driver.

It builds on the core (:mod:`convex_attention`) and uses the harness's figure style
(:mod:`convex_attention.bench.plots`); nothing in the core or the harness imports it.
Its extra dependencies (captum, scikit-learn, nibabel, pillow) come with
``pip install 'convex-attention[paper]'``.
"""
