"""DiT-Head: audio-driven talking-head synthesis with a latent diffusion transformer."""

__version__ = "0.1.0"
