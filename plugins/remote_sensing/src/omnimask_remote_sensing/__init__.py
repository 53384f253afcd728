"""omnimask remote_sensing plugin: CROMA radar-optical pretraining on Sentinel-1/2 GeoTIFFs."""
