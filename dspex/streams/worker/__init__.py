"""The worker: Faust agents that answer the inference and evaluation channels.

``app`` builds the Faust app and runs it; ``inference`` and ``evaluation`` hold
the Faust-free handlers the agents feed with record bytes; ``aggregator``
folds eval scores into the per-run reports table.
"""
