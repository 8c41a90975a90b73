"""Registered reward models: HPS conversion, loading by name from local copies, dtype, presets, training."""

import fractions
import logging
import math

import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset
from peft import LoraConfig
from reward_copies import open_clip_state_dict, save_copy, save_hps_copy
from uphill import uphill_step

from srpo_trl import SRPOConfig, SRPOTrainer
from srpo_trl.cli import main as cli_main
from srpo_trl.control_words import CONTROL_WORD_PRESETS
from srpo_trl.rewards import (
    REWARDS,
    AestheticReward,
    CLIPReward,
    ColorWordReward,
    hps_clip_model,
    load_reward,
    open_clip_to_transformers,
)
from srpo_trl.rewards.aesthetic import AestheticMLP
from srpo_trl.testing import save_tiny_depth_model, tiny_colour_flux_pipeline, tiny_flux_pipeline

# ------------------------------------------------------------------ plain-torch open_clip reference


def _block(x, state, prefix, heads, mask=None):
    """One open_clip residual attention block, written out from its definition."""
    h = F.layer_norm(x, x.shape[-1:], state[prefix + "ln_1.weight"], state[prefix + "ln_1.bias"], eps=1e-5)
    q, k, v = (h @ state[prefix + "attn.in_proj_weight"].T + state[prefix + "attn.in_proj_bias"]).chunk(3, -1)
    b, t, w = q.shape

    def split(z):
        return z.reshape(b, t, heads, w // heads).transpose(1, 2)

    scores = split(q) @ split(k).transpose(-1, -2) / math.sqrt(w // heads)
    if mask is not None:
        scores = scores + mask
    attended = (scores.softmax(-1) @ split(v)).transpose(1, 2).reshape(b, t, w)
    x = x + attended @ state[prefix + "attn.out_proj.weight"].T + state[prefix + "attn.out_proj.bias"]
    h = F.layer_norm(x, x.shape[-1:], state[prefix + "ln_2.weight"], state[prefix + "ln_2.bias"], eps=1e-5)
    h = F.gelu(h @ state[prefix + "mlp.c_fc.weight"].T + state[prefix + "mlp.c_fc.bias"])
    return x + h @ state[prefix + "mlp.c_proj.weight"].T + state[prefix + "mlp.c_proj.bias"]


def _reference_image_embedding(state, pixels, heads, layers):
    weight = state["visual.conv1.weight"]
    x = F.conv2d(pixels, weight, stride=weight.shape[-1]).flatten(2).transpose(1, 2)
    cls = state["visual.class_embedding"].expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], 1) + state["visual.positional_embedding"]
    x = F.layer_norm(x, x.shape[-1:], state["visual.ln_pre.weight"], state["visual.ln_pre.bias"], eps=1e-5)
    for i in range(layers):
        x = _block(x, state, f"visual.transformer.resblocks.{i}.", heads)
    x = F.layer_norm(x[:, 0], x.shape[-1:], state["visual.ln_post.weight"], state["visual.ln_post.bias"], eps=1e-5)
    return x @ state["visual.proj"]


def _reference_text_embedding(state, ids, heads, layers):
    x = state["token_embedding.weight"][ids] + state["positional_embedding"][: ids.shape[1]]
    causal = torch.full((ids.shape[1], ids.shape[1]), float("-inf")).triu(1)
    for i in range(layers):
        x = _block(x, state, f"transformer.resblocks.{i}.", heads, causal)
    x = F.layer_norm(x, x.shape[-1:], state["ln_final.weight"], state["ln_final.bias"], eps=1e-5)
    return x[torch.arange(ids.shape[0]), ids.argmax(-1)] @ state["text_projection"]  # end-of-text has the top id


def test_open_clip_conversion_matches_a_plain_torch_reference_forward():
    vocab = 200
    state = open_clip_state_dict(3, vocab_size=vocab)
    config, converted = open_clip_to_transformers(state, vision_heads=4, text_heads=3)
    from transformers import CLIPModel

    model = CLIPModel(config).eval()
    missing, unexpected = model.load_state_dict(converted, strict=False)
    assert not unexpected and all(k.endswith("position_ids") for k in missing)
    assert config.vision_config.hidden_act == "gelu" and config.vision_config.image_size == 224

    pixels = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    ids = torch.zeros(2, 77, dtype=torch.long)  # open_clip: start, tokens, end, then zeros
    for row, length in enumerate((5, 11)):
        ids[row, 0] = vocab - 2
        ids[row, 1 : length + 1] = torch.randint(1, vocab - 2, (length,), generator=torch.Generator().manual_seed(row))
        ids[row, length + 1] = vocab - 1
    with torch.no_grad():
        ours_image = model.get_image_features(pixel_values=pixels).pooler_output
        ours_text = model.get_text_features(input_ids=ids).pooler_output
    ref_image = _reference_image_embedding(state, pixels, heads=4, layers=2)
    ref_text = _reference_text_embedding(state, ids, heads=3, layers=2)
    assert torch.allclose(ours_image, ref_image, atol=1e-5), (ours_image - ref_image).abs().max()
    assert torch.allclose(ours_text, ref_text, atol=1e-5), (ours_text - ref_text).abs().max()
    assert ref_text.abs().mean() > 0.05  # not a degenerate comparison of near-zero vectors


def test_conversion_rejects_unknown_keys_and_bad_heads():
    state = open_clip_state_dict(0)
    with pytest.raises(ValueError, match="does not know"):
        open_clip_to_transformers({**state, "visual.ls_1.gamma": torch.ones(3)}, vision_heads=2, text_heads=2)
    with pytest.raises(ValueError, match="head counts"):
        open_clip_to_transformers(state, vision_heads=5, text_heads=2)
    with pytest.raises(ValueError, match="no keys start with"):
        open_clip_to_transformers({"foo": torch.ones(1)})


def test_hps_checkpoint_loads_with_weights_only_and_scores_raw_cosine(tmp_path):
    path = save_hps_copy(str(tmp_path / "hps"))
    reward = load_reward(f"hpsv2.1:{path}", vision_heads=2, text_heads=2)
    assert isinstance(reward, CLIPReward) and reward.name == "hpsv2.1" and reward.text_conditioned
    assert float(reward.scale) == 1.0  # HPS: raw cosine
    images = torch.rand(2, 3, 64, 64, requires_grad=True)
    score = reward.score(images, ["a cat", "a dog"])
    assert score.shape == (2,) and score.abs().max() <= 1.0 + 1e-6
    score.sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    # A pickled object that is not plain tensors is refused by weights_only loading.
    evil = tmp_path / "evil.pt"
    torch.save({"state_dict": {"x": torch.ones(1)}, "payload": fractions.Fraction(1, 3)}, evil)
    with pytest.raises(Exception, match="(?i)weights_only|unsupported|global"):
        hps_clip_model(str(evil))


def test_convert_hps_cli_writes_a_safetensors_clip_folder_equal_to_in_memory_conversion(tmp_path):
    path = save_hps_copy(str(tmp_path / "hps"))
    out = tmp_path / "converted"
    assert (
        cli_main(
            [
                "convert-hps",
                path,
                str(out),
                "--tokenizer",
                str(tmp_path / "hps"),
                "--vision_heads",
                "2",
                "--text_heads",
                "2",
            ]
        )
        == 0
    )
    assert (out / "model.safetensors").is_file() and (out / "tokenizer_config.json").is_file()
    from_folder = load_reward(f"hpsv2.1:{out}")
    in_memory = load_reward(f"hpsv2.1:{path}", vision_heads=2, text_heads=2)
    images = torch.rand(2, 3, 64, 64)
    prompts = ["a red house", "the sea"]
    torch.testing.assert_close(from_folder.score(images, prompts), in_memory.score(images, prompts))


def test_convert_hps_cli_reports_a_missing_checkpoint(tmp_path, capsys):
    with pytest.raises(SystemExit, match="does not exist"):
        cli_main(["convert-hps", str(tmp_path / "nope.pt"), str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", ["pickscore", "clip-vit-h-14", "clip-vit-l-14"])
def test_clip_names_use_the_logit_scale(tmp_path, name):
    reward = load_reward(f"{name}:{save_copy(name, str(tmp_path / name))}")
    assert isinstance(reward, CLIPReward) and reward.name == name
    torch.testing.assert_close(reward.scale, reward.model.logit_scale.exp().float() / 20)


def test_laion_aesthetic_is_image_only_and_matches_its_definition(tmp_path):
    folder = save_copy("laion-aesthetic", str(tmp_path / "aesthetic"))
    reward = load_reward(f"laion-aesthetic:{folder}")
    assert isinstance(reward, AestheticReward) and not reward.text_conditioned
    images = torch.rand(2, 3, 64, 64, requires_grad=True)
    score = reward.score(images, ["ignored", "also ignored"])
    # Its definition: the head on the normalised CLIP image embedding; the prompt plays no part.
    from transformers import CLIPModel

    from srpo_trl.rewards import clip_preprocess

    clip = CLIPModel.from_pretrained(folder)
    head = AestheticMLP(32)
    head.load_state_dict(torch.load(f"{folder}/aesthetic-model.pth", weights_only=True))
    embedding = clip.get_image_features(pixel_values=clip_preprocess(images.detach(), 224)).pooler_output
    expected = head.eval()(F.normalize(embedding, dim=-1)).squeeze(-1)
    torch.testing.assert_close(score, expected)
    torch.testing.assert_close(reward.srp(images, ["x", "y"], "Real", "Painting", 0.3), score)
    score.sum().backward()
    assert images.grad.abs().sum() > 0
    # Cast to bf16, the head stays in float32.
    reward.to(torch.bfloat16)
    assert reward.vision_model.dtype == torch.bfloat16 and reward.mlp.layers[0].weight.dtype == torch.float32


def test_unknown_names_and_missing_paths_fail_with_the_valid_names(tmp_path):
    with pytest.raises(ValueError, match="hpsv2.1"):
        load_reward("hps-v3")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_reward(f"pickscore:{tmp_path / 'missing'}")
    with pytest.raises(ValueError, match="registered reward name"):
        SRPOTrainer(model=None, reward_funcs="not-a-reward", args=SRPOConfig(str(tmp_path), report_to="none"))


def test_registry_documents_every_name(tmp_path):
    assert set(REWARDS) == {
        "hpsv2.1",
        "hpsv2",
        "pickscore",
        "clip-vit-h-14",
        "clip-vit-l-14",
        "laion-aesthetic",
        "hpsv3",
        "depth-consistency",
        "temporal-consistency",
        "videoalign",
    }
    for spec in REWARDS.values():
        assert spec.checkpoint and spec.license and spec.output_scale and spec.parameters
    image_only = ["laion-aesthetic", "depth-consistency", "temporal-consistency"]
    assert [n for n, s in REWARDS.items() if not s.text_conditioned] == image_only
    assert [n for n, s in REWARDS.items() if s.video] == ["temporal-consistency", "videoalign"]
    assert [n for n, s in REWARDS.items() if s.conditions] == ["depth-consistency"]
    assert load_reward("depth-consistency:" + save_tiny_depth_model(str(tmp_path / "depth"))).conditions == (
        "control_images",
    )


# ------------------------------------------------------------------------------ config: presets, dtype


def test_control_word_presets(tmp_path):
    args = SRPOConfig(str(tmp_path), control_words="detail", report_to="none")
    assert args.positive_control_words == list(CONTROL_WORD_PRESETS["detail"].positive)
    assert args.negative_control_words == list(CONTROL_WORD_PRESETS["detail"].negative)
    recipe = SRPOConfig(str(tmp_path), control_words="hps-realism", report_to="none")
    assert recipe.positive_control_words == ["Natural-lighting", "Detail", "Detailed", "Real"]
    # A config saved with a preset reloads (its lists are then the preset's).
    SRPOConfig(**{**args.to_dict(), "output_dir": str(tmp_path)})
    with pytest.raises(ValueError, match="control_words='realistic'.*valid presets"):
        SRPOConfig(str(tmp_path), control_words="realistic")
    with pytest.raises(ValueError, match="either a preset or explicit"):
        SRPOConfig(str(tmp_path), control_words="detail", positive_control_words=["Real"])


def test_reward_dtype(tmp_path):
    assert SRPOConfig(str(tmp_path), bf16=False).reward_torch_dtype == torch.float32
    assert SRPOConfig(str(tmp_path), bf16=False, reward_dtype="bfloat16").reward_torch_dtype == torch.bfloat16
    with pytest.raises(ValueError, match="reward_dtype='int8'"):
        SRPOConfig(str(tmp_path), reward_dtype="int8")


# --------------------------------------------------------------------------- every name trains

TRAIN = Dataset.from_dict({"prompt": ["a cat", "a dog on a hill", "a house", "the sea"]})


# Rewards that compare with a condition need a pipeline that takes one: tests/test_consistency_rewards.py steps them.
@pytest.mark.parametrize("name", sorted(n for n, spec in REWARDS.items() if not spec.conditions and not spec.video))
def test_every_registered_name_steps_uphill_on_both_branches_at_the_recipe_defaults(tmp_path, config, name, caplog):
    """One real step at the recipe's lr, grad clipping, each reward's own hinge threshold and the inversion branch
    on: the weights move uphill on both branches' rewards (see `tests/uphill.py` for why that is the claim)."""
    path = save_copy(name, str(tmp_path / "reward"))
    args = config(max_steps=1, per_device_train_batch_size=2, rollout_steps=3, reward_dtype="float32")
    assert args.learning_rate == 5e-6 and args.max_grad_norm == 0.1
    assert args.hinge_threshold is None and args.use_inversion_branch
    with caplog.at_level(logging.WARNING, logger="srpo_trl"):
        # Its VAE gives images with visible colour, so rewards respond to the weights.
        trainer = SRPOTrainer(
            model=tiny_colour_flux_pipeline(0),
            reward_funcs=f"{name}:{path}",
            args=args,
            train_dataset=TRAIN,
            peft_config=LoraConfig(r=8, lora_alpha=8, init_lora_weights="gaussian"),
        )
    reward = trainer.rewards[0]
    assert reward.name == name and not reward.training
    assert not any(p.requires_grad for p in reward.parameters())
    assert trainer.hinge_thresholds == [REWARDS[name].hinge_threshold]
    assert ("image-only" in caplog.text) == (name == "laion-aesthetic")
    assert ("plain Direct-Align" in str(trainer.model_card(str(tmp_path)))) == (name == "laion-aesthetic")

    step = uphill_step(trainer)
    assert set(step.dots) == {"denoise", "inversion"}
    assert step.uphill, (name, step.dots)
    # LoRA B starts at zero, so A has no gradient on the first step; every tensor that had one moved.
    assert not step.unchanged_with_gradient and step.dtypes == {torch.float32}
    assert all(step.changed[n] for n in step.changed if "lora_B" in n)
    assert not any(p.requires_grad for p in reward.parameters()) and not reward.training
    logged = {k for row in trainer.state.log_history for k in row}
    assert {f"rewards/{name}/denoise", f"rewards/{name}/inversion"} <= logged


def test_two_rewards_by_name_with_weights_in_bf16(tmp_path, config):
    args = config(max_steps=2, reward_weights=[1.0, 0.5], reward_dtype="bfloat16")
    trainer = SRPOTrainer(
        model=tiny_flux_pipeline(0),
        reward_funcs=[f"pickscore:{save_copy('pickscore', str(tmp_path / 'p'))}", ColorWordReward()],
        args=args,
        train_dataset=TRAIN,
    )
    assert trainer.rewards[0].model.dtype == torch.bfloat16
    trainer.train()
    logged = {k for row in trainer.state.log_history for k in row}
    assert {"rewards/pickscore/denoise", "rewards/color/denoise", "reward/denoise"} <= logged


def test_example_script_trains_with_a_registered_reward_name(tmp_path):
    import subprocess
    import sys

    pipe_dir = tmp_path / "pipe"
    tiny_flux_pipeline(0).save_pretrained(pipe_dir)
    hps = save_copy("hpsv2.1", str(tmp_path / "hps"))
    prompts = tmp_path / "prompts.csv"
    prompts.write_text("prompt,source\na cat,x\na dog,y\n")
    out = tmp_path / "out"
    command = [
        sys.executable, "examples/train_srpo.py", "--model_name_or_path", str(pipe_dir), "--dataset_name",
        str(prompts), "--reward_funcs", f"hpsv2.1:{hps}", "--output_dir", str(out), "--max_steps", "1",
        "--resolution", "64", "--rollout_steps", "2", "--max_sequence_length", "16", "--report_to", "none",
        "--use_peft", "--lora_r", "4", "--lora_alpha", "4", "--control_words", "detail", "--dataset_shuffle_seed", "3",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "pytorch_lora_weights.safetensors").is_file()
    card = (out / "README.md").read_text()
    assert "hpsv2.1" in card and "Sharp" in card
