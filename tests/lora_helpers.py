"""What the LoRA round-trip tests of every family share: the LoRA kinds a saved result must reload as (diffusers reloads
a LoRA without its saved config with `lora_alpha = r`), and a LoRA moved far from identity."""

import torch

#: `alpha != r`, rsLoRA and DoRA: each changes the scale or the shape of the update, so each must travel with the weights.
LORAS = {
    "alpha-not-r": dict(r=4, lora_alpha=8),
    "rslora": dict(r=4, lora_alpha=8, use_rslora=True),
    "dora": dict(r=4, lora_alpha=8, use_dora=True),
}


def far_from_identity(model: torch.nn.Module, seed: int = 0) -> None:
    """Random `lora_B` (peft starts it at zero) and DoRA magnitudes: the LoRA changes the images a lot, so that a
    reload compared with the trained model is not a comparison of two bases."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(0.05 * torch.randn(p.shape, generator=generator))
            elif "lora_magnitude_vector" in name:
                p.mul_(1 + 0.5 * torch.rand(p.shape, generator=generator))
