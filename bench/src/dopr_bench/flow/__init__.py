"""Flow-matching generative bench on scikit-learn's 8x8 digits (sample quality vs integration steps)."""
