"""DSPEx: language-model programs, served as a Kafka stream processor.

The public API is what ``__all__`` lists; everything else is private and may
change without notice.
"""

from dspex.errors import DSPExError

__version__ = "0.1.0"

__all__ = ["DSPExError", "__version__"]
