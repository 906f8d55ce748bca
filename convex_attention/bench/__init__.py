"""The benchmark harness: sweeps (settings declared in :mod:`.config`), the core speed
targets, timing, score generators, verification against CVXPY, figures (:mod:`.plots`),
and the sweep's tables and their writer (:mod:`.results`).

It builds on the core (:mod:`convex_attention`) and the shared floor
(:mod:`convex_attention.io`), never on the experiment (:mod:`convex_attention.paper`).
Importing it loads no matplotlib or cvxpy; those load when a figure is drawn or a
reference solve runs.
"""
