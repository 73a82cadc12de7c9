"""pytorch-fid's own FID features, the reference for ``dithead.metrics.fid``: run in a subprocess.

    python pytorch_fid_features.py CHECKPOINT IMAGES.npy OUT.npy

CHECKPOINT: a state dict in the layout of pt_inception-2015-12-05-6726825d.pth
(pytorch-fid would download that file; it is handed this one instead).
IMAGES.npy: uint8 (N, H, W, 3). OUT.npy: the (N, 2048) pool features, as
pytorch-fid's ``InceptionV3([3])`` computes them, its resizing and scaling included.

pytorch-fid builds on torchvision, whose wheel on PyPI carries CUDA-built
operators that do not load beside the CPU torch; the model code does not need
them, so the module that registers them is left out. That is why this runs in
its own process, with ``.venv/reference`` on its path (Makefile, setup).
"""

import sys
import types

import numpy as np
import torch

sys.modules["torchvision._meta_registrations"] = types.ModuleType("torchvision._meta_registrations")

from pytorch_fid import inception  # noqa: E402


def main(checkpoint: str, images: str, out: str) -> None:
    state = torch.load(checkpoint, weights_only=True)
    inception.load_state_dict_from_url = lambda *args, **kwargs: state
    net = inception.InceptionV3([inception.InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()
    x = torch.from_numpy(np.load(images)).permute(0, 3, 1, 2).float() / 255.0
    with torch.no_grad():
        features = net(x)[0].flatten(1)
    np.save(out, features.double().numpy())


if __name__ == "__main__":
    main(*sys.argv[1:4])
