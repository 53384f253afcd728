"""omnimask pointcloud plugin."""
