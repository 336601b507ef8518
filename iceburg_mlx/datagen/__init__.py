"""Data made with a model: preference pairs from sampled answers (best-of-N). Above the data
pipeline (which stays model-free) and the generation engine, which it drives."""
