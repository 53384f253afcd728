"""MambaMIM: the hybrid CNN-Mamba encoder, TOKI, the decoder and the target."""
