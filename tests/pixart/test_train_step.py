"""Issue requirement (e): one optimizer step of a tiny PixArtTransformer2DModel on a batch from our loader."""

import torch
from diffusers import DDPMScheduler, PixArtTransformer2DModel

from curation.pixart.loader import ShardBucketDataset


def test_one_training_step_on_a_loader_batch(demo_dataset, tiny_models):
    torch.manual_seed(0)
    transformer = PixArtTransformer2DModel.from_pretrained(tiny_models / "pixart_sigma", subfolder="transformer")
    scheduler = DDPMScheduler()
    batch = next(iter(ShardBucketDataset(str(demo_dataset), batch_size=2, drop_last=True)))
    latents = batch["latents"] * 0.13025
    assert latents.shape[0] == 2 and latents.shape[1] == 4
    noise = torch.randn_like(latents)
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (latents.shape[0],))
    noisy = scheduler.add_noise(latents, noise, timesteps)
    optimizer = torch.optim.AdamW(transformer.parameters(), lr=1e-3)
    before = [p.detach().clone() for p in transformer.parameters()]

    output = transformer(
        noisy,
        encoder_hidden_states=batch["y"].squeeze(1),
        encoder_attention_mask=batch["y_mask"].squeeze(1).squeeze(1),
        timestep=timesteps,
        added_cond_kwargs={"resolution": None, "aspect_ratio": None},
    ).sample
    assert output.shape[2:] == latents.shape[2:]
    loss = torch.nn.functional.mse_loss(output[:, :4], noise)  # the other 4 channels are the learned variance
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    assert any(not torch.equal(a, b) for a, b in zip(before, transformer.parameters(), strict=True))
