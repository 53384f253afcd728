"""omnimask plugin: audio. w2v-BERT self-supervised speech pretraining on log-mel filterbanks."""
