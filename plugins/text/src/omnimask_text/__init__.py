"""omnimask text plugin."""
