"""omnimask plugin template: masked autoencoding of multichannel 1-D time series."""
