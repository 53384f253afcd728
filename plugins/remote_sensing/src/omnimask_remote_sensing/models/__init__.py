"""CROMA's building blocks (`layers`, `alibi`) and the pipeline (`croma`)."""
