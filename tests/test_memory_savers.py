"""Memory savers that must not change the maths: sliced VAE decoding gives the same loss and gradients."""

import torch
from datasets import Dataset
from peft import LoraConfig

from srpo_trl import ColorWordReward, SRPOTrainer
from srpo_trl.testing import tiny_colour_flux_pipeline

PROMPTS = ["a cat", "a dog on a hill"]


def _one_step_gradients(config, vae_slicing: bool):
    torch.manual_seed(0)  # the same LoRA initialisation for both trainers
    trainer = SRPOTrainer(
        tiny_colour_flux_pipeline(0),
        ColorWordReward(),
        args=config(vae_slicing=vae_slicing, per_device_train_batch_size=2),
        train_dataset=Dataset.from_dict({"prompt": PROMPTS}),
        peft_config=LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian"),
    )
    decoded_batches = []
    hook = trainer.pipeline.vae.decoder.register_forward_pre_hook(lambda m, a: decoded_batches.append(a[0].shape[0]))
    loss = trainer.compute_loss(trainer.model_wrapped, {"prompt": PROMPTS})
    loss.backward()
    hook.remove()
    grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    return loss.detach(), grads, decoded_batches


def test_vae_slicing_decodes_one_image_at_a_time_with_the_same_loss_and_gradients(config):
    loss_sliced, grads_sliced, batches_sliced = _one_step_gradients(config, vae_slicing=True)
    loss_whole, grads_whole, batches_whole = _one_step_gradients(config, vae_slicing=False)
    # 2 prompts x 2 branches: one decode of 4 latents, or four decodes of 1.
    assert batches_whole == [4] and batches_sliced == [1, 1, 1, 1]
    torch.testing.assert_close(loss_sliced, loss_whole, rtol=1e-5, atol=1e-6)
    assert grads_sliced.keys() == grads_whole.keys() and grads_whole
    assert any(g.abs().sum() > 0 for g in grads_whole.values())
    for name, grad in grads_whole.items():
        torch.testing.assert_close(grads_sliced[name], grad, rtol=1e-4, atol=1e-7, msg=name)
