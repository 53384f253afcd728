"""omnimask remote_sensing plugin."""
