"""The optimizer service: consumes control commands, runs optimizer jobs whose
evaluations fan out to the workers, publishes candidates and promotes winners.

``service`` is the Faust app and its agents; ``jobs`` runs one job with the
optimizers of :mod:`dspex.optimizers`; ``online`` keeps the scored production
traces that online jobs bootstrap demos from.
"""
