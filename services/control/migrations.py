"""The one ordered list of migrations: each package's own list, in import order."""

from serving.migrations import MIGRATIONS as SERVING
from streams.migrations import MIGRATIONS as STREAMS
from training.migrations import MIGRATIONS as TRAINING

ALL = [*STREAMS, *SERVING, *TRAINING]
