"""omnimask text plugin: masked language modelling (BERT and descendants, ELECTRA)."""
