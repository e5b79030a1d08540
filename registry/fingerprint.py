"""A cheap, dtype-stable fingerprint of a model's weights, to refuse edits made for another model."""

from __future__ import annotations

import hashlib
from typing import Any

SAMPLES_PER_TENSOR = 1024


def model_fingerprint(model: Any) -> str:
    """sha256 over every tensor's name and shape plus an evenly strided sample of its values.

    Values are compared after rounding to bfloat16, so the same checkpoint loaded in float32 or
    bfloat16 has the same fingerprint; any real weight change (an edit, a fine-tune) changes it.
    """
    import torch

    digest = hashlib.sha256()
    config = getattr(model, "config", None)
    digest.update(str(getattr(config, "model_type", type(model).__name__)).encode())
    with torch.no_grad():
        for name, tensor in sorted(model.state_dict().items()):
            digest.update(name.encode())
            digest.update(str(tuple(tensor.shape)).encode())
            if tensor.device.type == "meta" or tensor.numel() == 0:
                continue
            flat = tensor.detach().reshape(-1)
            step = max(1, flat.numel() // SAMPLES_PER_TENSOR)
            sample = flat[::step][:SAMPLES_PER_TENSOR]
            if sample.is_floating_point():
                sample = sample.to(torch.bfloat16).view(torch.int16)
            digest.update(sample.cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:32]
