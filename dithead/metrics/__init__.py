"""Evaluation metrics of the paper's Table 1 (section 4.1) and lip-sync extras.

Submodules, imported on use so that importing one metric does not load the others:

- ``image``: PSNR, SSIM (whole crop and mouth region)
- ``landmarks``: LMD, mouth landmark distance (weight-free)
- ``fid``: Fréchet Inception Distance (pytorch-fid's Inception v3)
- ``syncnet``: LSE-C / LSE-D (SyncNet v2, as in the Wav2Lip evaluation)
- ``evaluation``: :func:`evaluate_videos`, every metric on a pair of videos; :func:`evaluate_samples`, the evaluate stage
- ``weights``: loading pretrained checkpoints from configured paths

LPIPS lives in :mod:`dithead.models.lpips` (also used as a training loss).
"""

from dithead.metrics.weights import MissingWeightsError, WeightsFormatError

__all__ = ["MissingWeightsError", "WeightsFormatError"]
