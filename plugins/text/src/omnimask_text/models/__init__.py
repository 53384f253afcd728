"""Models of the text recipes, built on Hugging Face `transformers` so exports load natively."""
