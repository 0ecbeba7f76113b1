"""Attack-failure checks: does a run's robust accuracy deserve trust?

``spec`` (the suite's ``checks:`` section), ``from_rows`` (checks computed from stored rows),
``probes`` (checks that run the defense on a subsample), ``storage`` (results in
results.sqlite), ``run`` (plan + compute what a run is missing), ``report`` (the Checks
section of summaries, boards and captions). Nothing is imported here, so that the suite loader
can import ``spec`` without pulling in attacks or torch models.
"""
