"""Training: the shared run skeleton (run.py), the VQGAN and DiT training and their datasets, the split."""
