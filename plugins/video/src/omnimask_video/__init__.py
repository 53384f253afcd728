"""omnimask plugin for video: VideoMAE masked video pretraining with tube masking."""
