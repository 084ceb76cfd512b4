"""Tiny random LoRAs that fit a pipeline's network (offline, seconds), for tests and demos.

peft's ``LoraConfig`` is injected into *copies* of the pipeline's network (and, when asked, its
text encoder), so the pipeline itself is left as it was; ``lora_B`` is drawn at random (peft starts
it at zero, which would change nothing) and the layers are saved with the pipeline class's
``save_lora_weights``, the file diffusers' ``load_lora_weights`` reads back.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import torch

__all__ = ["tiny_lora"]

#: the layers the LoRA wraps: the attention projections of the network, and of a CLIP text encoder
NETWORK_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
TEXT_TARGETS = ["q_proj", "v_proj"]


def tiny_lora(pipe, folder: str | os.PathLike, *, text_encoder: bool = False, seed: int = 0, rank: int = 4,
              std: float = 0.5, name: str | None = None) -> Path:
    """A rank-``rank`` LoRA for ``pipe``'s network (and its text encoder with ``text_encoder``),
    ``lora_B`` drawn N(0, ``std``) from ``seed``; written to ``folder`` (as
    ``pytorch_lora_weights.safetensors``, or ``name``). Returns the weights file. The caller's
    global RNG and ``pipe`` are left untouched."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig, inject_adapter_in_model
    from peft.utils import get_peft_model_state_dict

    net = pipe.unet if hasattr(pipe, "unet") else pipe.transformer
    parts = {"unet_lora_layers" if hasattr(pipe, "unet") else "transformer_lora_layers": copy.deepcopy(net)}
    if text_encoder:
        parts["text_encoder_lora_layers"] = copy.deepcopy(pipe.text_encoder)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for key, model in parts.items():
            targets = TEXT_TARGETS if key.startswith("text") else NETWORK_TARGETS
            # peft itself, not transformers' add_adapter (which wants a newer peft than diffusers does)
            inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                                               target_modules=targets), model)
            for param_name, p in model.named_parameters():
                if "lora_B" in param_name:
                    torch.nn.init.normal_(p, std=std)
    layers = {key: get_peft_model_state_dict(model) for key, model in parts.items()}
    layers = {k: (convert_state_dict_to_diffusers(v) if k.startswith(("unet", "transformer")) else v)
              for k, v in layers.items()}
    folder = Path(folder)
    kwargs = {} if name is None else {"weight_name": name}
    type(pipe).save_lora_weights(str(folder), **layers, safe_serialization=True, **kwargs)
    return folder / (name or "pytorch_lora_weights.safetensors")
