"""The benchmark harness: sweeps, the core speed targets, timing, score generators,
verification against CVXPY, figures, and the results writer.

It builds on the core (:mod:`convex_attention`) and never on the experiment
(:mod:`convex_attention.paper`).  Importing it loads no matplotlib or cvxpy; those load
when a figure is drawn or a reference solve runs.
"""
