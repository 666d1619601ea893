"""Clean sources, vocabulary, poison documents, mixer, and the training stream.

Importing this package registers the seqio Tasks (see seqio_tasks.py).
"""

from poisonjax.data import seqio_tasks, sources, stream, vocabulary

seqio_tasks.register_defaults()

__all__ = ["seqio_tasks", "sources", "stream", "vocabulary"]
