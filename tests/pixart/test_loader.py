from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from curation.pixart import loader as loader_module
from curation.pixart.loader import ShardBucketDataset, assign_work, pad_tokens


def collect(dataset: ShardBucketDataset, num_workers: int = 0) -> list[dict]:
    return list(DataLoader(dataset, batch_size=None, num_workers=num_workers))


def all_keys(batches: list[dict]) -> list[str]:
    return [key for batch in batches for key in batch["keys"]]


def test_batches_are_bucket_homogeneous_with_pixart_shapes(make_dataset):
    root, stored = make_dataset(shards=3, per_shard=8)
    batches = collect(ShardBucketDataset(str(root), batch_size=2))
    assert batches
    for batch in batches:
        samples = [stored[key] for key in batch["keys"]]
        assert len({sample.bucket for sample in samples}) == 1
        _, h8, w8 = samples[0].vae.shape
        assert batch["latents"].shape == (2, 4, h8, w8) and batch["latents"].dtype == torch.float32
        assert batch["y"].shape == (2, 1, 300, 16) and batch["y_mask"].shape == (2, 1, 1, 300)
        assert batch["data_info"]["img_hw"].tolist() == [[float(s.height), float(s.width)] for s in samples]
        assert batch["data_info"]["aspect_ratio"].tolist() == pytest.approx([float(s.bucket) for s in samples])


def test_text_features_match_stored_arrays(make_dataset):
    root, stored = make_dataset(flavor="alpha")
    for batch in collect(ShardBucketDataset(str(root), batch_size=2, drop_last=False)):
        assert batch["y"].shape[2] == 120  # default T from the manifest
        for row, key in enumerate(batch["keys"]):
            t5 = stored[key].t5
            tokens = t5.shape[0]
            assert batch["y_mask"][row, 0, 0].sum() == tokens and batch["y_mask"][row, 0, 0, :tokens].all()
            np.testing.assert_array_equal(batch["y"][row, 0, :tokens].numpy(), t5.astype(np.float32))
            padding = np.broadcast_to(t5[-1].astype(np.float32), (120 - tokens, 16))
            np.testing.assert_array_equal(batch["y"][row, 0, tokens:].numpy(), padding)


def test_zero_std_latents_equal_the_mean(make_dataset):
    root, stored = make_dataset(std_scale=0.0)
    for batch in collect(ShardBucketDataset(str(root), batch_size=1, drop_last=False)):
        mean = stored[batch["keys"][0]].vae[:4].astype(np.float32)
        np.testing.assert_array_equal(batch["latents"][0].numpy(), mean)


def test_latents_are_mean_plus_std_times_standard_noise(make_dataset):
    root, stored = make_dataset(std_scale=2.0)
    noise = []
    for batch in collect(ShardBucketDataset(str(root), batch_size=1, drop_last=False)):
        moments = stored[batch["keys"][0]].vae.astype(np.float32)
        noise.append(((batch["latents"][0].numpy() - moments[:4]) / moments[4:]).ravel())
    eps = np.concatenate(noise)
    assert abs(eps.mean()) < 0.05 and abs(eps.std() - 1) < 0.05


def test_noise_is_seeded_per_epoch(make_dataset):
    root, _ = make_dataset()
    dataset = ShardBucketDataset(str(root), batch_size=1, drop_last=False, shuffle=False)
    first = collect(dataset)
    again = collect(dataset)
    dataset.set_epoch(1)
    later = collect(dataset)
    assert all(torch.equal(a["latents"], b["latents"]) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[0]["latents"], later[0]["latents"])


@pytest.mark.parametrize("shards", [1, 3, 5])
def test_two_ranks_two_workers_read_every_key_once(make_dataset, shards):
    root, stored = make_dataset(shards=shards, per_shard=6)
    seen = Counter()
    for rank in range(2):
        dataset = ShardBucketDataset(str(root), batch_size=1, drop_last=False, rank=rank, world_size=2)
        seen.update(all_keys(collect(dataset, num_workers=2)))
    assert set(seen) == set(stored) and set(seen.values()) == {1}


def test_assignment_covers_keys_exactly_once_for_any_consumer_count():
    shard_keys = {f"s{i}": [f"k{i}_{j}" for j in range(5)] for i in range(3)}
    for consumers in range(1, 9):
        covered = Counter()
        for consumer in range(consumers):
            for work in assign_work(shard_keys, consumer, consumers, order_seed=7):
                covered.update(sorted(shard_keys[work.shard])[work.slot :: work.sharers])
        assert covered == Counter(key for keys in shard_keys.values() for key in keys)


def test_shuffle_changes_with_epoch_and_is_reproducible(make_dataset):
    root, _ = make_dataset(shards=3, per_shard=8)
    dataset = ShardBucketDataset(str(root), batch_size=1, drop_last=False, seed=3)
    first, again = all_keys(collect(dataset)), all_keys(collect(dataset))
    dataset.set_epoch(1)
    assert first == again and all_keys(collect(dataset)) != first


def test_drop_last_keeps_only_full_batches(make_dataset):
    root, stored = make_dataset(shards=2, per_shard=6)
    batches = collect(ShardBucketDataset(str(root), batch_size=4))
    assert all(len(batch["keys"]) == 4 for batch in batches)
    per_bucket = Counter(sample.bucket for sample in stored.values())
    assert len(batches) == sum(count // 4 for count in per_bucket.values())


def test_even_batches_gives_every_rank_the_same_count(make_dataset):
    root, _ = make_dataset(shards=3, per_shard=6)
    counts = []
    for rank in range(2):
        dataset = ShardBucketDataset(str(root), batch_size=1, rank=rank, world_size=2, even_batches=True)
        batches = collect(dataset, num_workers=2)
        assert len(batches) == dataset.num_batches(num_workers=2)
        counts.append(len(batches))
    assert counts[0] == counts[1] > 0


def test_num_batches_matches_what_a_rank_yields(make_dataset):
    root, _ = make_dataset(shards=3, per_shard=6)
    for rank in range(2):
        dataset = ShardBucketDataset(str(root), batch_size=2, drop_last=False, rank=rank, world_size=2)
        assert len(collect(dataset, num_workers=2)) == dataset.num_batches(num_workers=2)


def test_rank_comes_from_torch_distributed(make_dataset, monkeypatch):
    root, stored = make_dataset(shards=2, per_shard=4)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda: 1)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 2)
    keys = all_keys(collect(ShardBucketDataset(str(root), batch_size=1, drop_last=False, shuffle=False)))
    assert keys == sorted(k for k, s in stored.items() if s.shard == "00001.tar")


def test_reads_from_fsspec_url(make_dataset):
    root, stored = make_dataset(shards=2, per_shard=3)
    keys = all_keys(collect(ShardBucketDataset(f"file://{root}", batch_size=1, drop_last=False)))
    assert sorted(keys) == sorted(stored)


def test_features_longer_than_max_length_are_refused(make_dataset):
    root, _ = make_dataset()
    with pytest.raises(ValueError, match="do not fit"):
        collect(ShardBucketDataset(str(root), batch_size=1, max_length=2))


def test_pad_tokens_repeats_the_last_token():
    padded, mask = pad_tokens(np.array([[1.0, 2.0], [3.0, 4.0]], dtype=np.float16), 4)
    assert padded.tolist() == [[1, 2], [3, 4], [3, 4], [3, 4]] and mask.tolist() == [1, 1, 0, 0]


def test_tars_are_not_opened_at_construction(make_dataset, monkeypatch):
    root, _stored = make_dataset()
    monkeypatch.setattr(loader_module, "iter_tar_samples", lambda *args, **kwargs: pytest.fail("tar opened"))
    dataset = ShardBucketDataset(str(root), batch_size=2)
    assert dataset.num_batches() > 0


@pytest.mark.parametrize("micro_conditions", [False, True])
def test_batches_feed_a_diffusers_pixart_transformer(make_dataset, micro_conditions):
    from diffusers import PixArtTransformer2DModel

    root, _ = make_dataset(shards=1, per_shard=6)
    transformer = PixArtTransformer2DModel(
        sample_size=32,
        num_layers=1,
        attention_head_dim=8,
        num_attention_heads=3,
        in_channels=4,
        out_channels=8,
        cross_attention_dim=24,
        caption_channels=16,
        norm_type="ada_norm_single",
        use_additional_conditions=micro_conditions,
    )
    batch = collect(ShardBucketDataset(str(root), batch_size=2))[0]
    info = batch["data_info"]
    added = (
        {"resolution": info["img_hw"], "aspect_ratio": info["aspect_ratio"]}
        if micro_conditions
        else {"resolution": None, "aspect_ratio": None}
    )
    with torch.no_grad():
        out = transformer(
            batch["latents"],
            encoder_hidden_states=batch["y"].squeeze(1),
            encoder_attention_mask=batch["y_mask"].squeeze(1).squeeze(1),
            timestep=torch.tensor([1, 500]),
            added_cond_kwargs=added,
        ).sample
    assert out.shape == (2, 8, *batch["latents"].shape[2:])
