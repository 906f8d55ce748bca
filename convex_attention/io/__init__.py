"""The shared floor under both wings: what every command writes and reads, the same way.

* :mod:`.files`: atomic files, strict JSON, CSV fields that round-trip, row checksums,
  the output folder check;
* :mod:`.tables`: the one reader of results tables (damaged rows reported and left out,
  typed rows against a :class:`~.tables.Schema`);
* :mod:`.lock`: one writer per results folder;
* :mod:`.environment`: the record of the machine a number was measured on;
* :mod:`.figures`: the figure style and ``save`` (PNG and PDF with the environment line);
* :mod:`.settings`: settings declared once (name, type, default, help, choices) for the
  configurations, their command-line options and their files.

Both wings (``bench`` and ``paper``) and the baselines stand on it; it imports nothing of
theirs, and nothing of the core either.  Importing this package imports none of its
modules (``figures`` brings matplotlib).
"""
