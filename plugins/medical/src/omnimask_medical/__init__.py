"""omnimask-medical: MambaMIM masked pretraining of hybrid CNN-Mamba encoders on 3D CT."""
