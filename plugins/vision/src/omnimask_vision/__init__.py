"""omnimask vision plugin."""
