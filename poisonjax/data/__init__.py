"""Clean sources, vocabulary, poison documents, mixer, and the training stream.

Importing this package imports nothing heavy (no TensorFlow, no seqio):
import the submodule you need. The seqio Tasks are registered only by an
explicit `import poisonjax.data.seqio_tasks`.
"""
