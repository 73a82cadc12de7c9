"""Networks: the VQGAN autoencoder builder, the DiT denoiser, LPIPS, pixel/latent conversions."""
