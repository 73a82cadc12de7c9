"""Inference: sampling, the DiTHeadPipeline, interpolation, watermark, the video writer."""
