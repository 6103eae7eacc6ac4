"""The optimizer service: consumes control commands, runs optimizer jobs whose
evaluations fan out to the workers, publishes candidates and promotes winners.

``service`` is the Faust app and the state it holds; ``commands`` carries out
control commands; ``runner`` runs jobs (search and online) and applies the
promotion gate; ``publisher`` writes journal records, events and program
versions; ``jobs`` builds a job's optimizer from :mod:`dspex.optimizers`;
``online`` keeps the scored production traces that online jobs bootstrap
demos from.
"""
