"""Training data (render/generation pairs, the omni infill dataset) for fine-tuning the image models."""
