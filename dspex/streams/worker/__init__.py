"""The worker: bounded Kafka consumers that answer the inference and evaluation channels.

``app`` builds the worker's Faust app (its life: tasks, signals, graceful
stop) and runs it; ``consumer`` is the bounded, commit-after-produce consumer
of each request channel, with ``offsets`` (what may be committed) and
``delivery`` (producing a record's results); ``inference`` and ``evaluation``
hold the Kafka-free handlers it feeds with record bytes; ``aggregator`` folds
eval scores into the per-run reports table.
"""
