"""poisonjax: data-poisoning scaling studies of LLM pretraining in JAX/Flax."""

__version__ = "0.1.0"
