"""One module per method: encoder, decoder and target of SparK, MAE and SimMIM."""
