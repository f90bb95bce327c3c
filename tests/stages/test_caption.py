"""CaptionStage on the tiny random-weight LLaVAs (real processors, chat templates and generate path)."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers.utils import is_torchvision_available

from curation.config import CaptionConfig, CaptionJob, ModelRef, Resources
from curation.records import FAILED, OK, REJECTED, Row, mark, new_row, put_pixels
from curation.stages.caption import CaptionStage, caption_prompt
from curation.stages.prepare import caption_view

MAX_NEW_TOKENS = 12


def caption_config(tiny_models: Path, jobs: dict | None = None, **overrides) -> CaptionConfig:
    """Dense only unless ``jobs`` says otherwise; ``max_new_tokens`` / ``do_sample`` / … go to every job."""
    job_fields = {k: overrides.pop(k) for k in list(overrides) if k in CaptionJob.model_fields}
    defaults = {"max_new_tokens": MAX_NEW_TOKENS, **job_fields}
    jobs = {name: {**defaults, **job} for name, job in (jobs or {"dense": {}}).items()}
    fields = dict(
        model=ModelRef(path=str(tiny_models / "llava"), device="cpu", dtype="float32"),
        resources=Resources(num_gpus=0, batch_size=8),
        jobs={
            name: CaptionJob(**{"max_new_tokens": MAX_NEW_TOKENS, **job_fields, **spec}) for name, spec in jobs.items()
        },
    )
    fields.update(overrides)
    return CaptionConfig(**fields)


def ready_stage(tiny_models: Path, **overrides) -> CaptionStage:
    stage = CaptionStage(caption_config(tiny_models, **overrides))
    stage.setup()
    return stage


def image_bytes(size: tuple[int, int], color: str, fmt: str = "JPEG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format=fmt)
    return buffer.getvalue()


def image_row(key: str, size: tuple[int, int] = (64, 48), color: str = "red", alt: str | None = None) -> Row:
    """A row as the filter stage leaves it: encoded image + the prepared caption input."""
    row = new_row(key, f"mem://{key}", image_bytes(size, color), alt=alt)
    put_pixels(row, "caption", caption_view(Image.open(io.BytesIO(row["image"])), 1024))
    return row


def captions_of(row: Row) -> dict[str, str]:
    return json.loads(row["captions"])


@pytest.fixture(scope="module")
def stage(tiny_models: Path) -> CaptionStage:
    return ready_stage(tiny_models)


def test_prompt_uses_alt_text_when_present() -> None:
    job = CaptionJob()
    assert caption_prompt(job, "a red car") == (
        'Given the caption of this image "a red car", describe this image and its style in a very detailed manner.'
    )
    assert caption_prompt(job, None) == job.prompt
    assert caption_prompt(job, "   ") == job.prompt
    assert caption_prompt(CaptionJob(prompt="Plain.", prompt_with_alt=None), "alt") == "Plain."


def test_prompt_templates_come_from_config() -> None:
    job = CaptionJob(prompt="Describe.", prompt_with_alt="Alt is <{alt}>. Describe.")
    assert caption_prompt(job, " {braces} ") == "Alt is <{braces}>. Describe."
    assert caption_prompt(job, "") == "Describe."


def test_batch_of_three_sizes_gets_captions_and_keeps_alt(stage: CaptionStage) -> None:
    rows = [
        image_row("wide", (320, 90), "red", alt="a red banner"),
        image_row("tall", (50, 200), "blue"),
        image_row("square", (128, 128), "yellow", alt="sun"),
    ]
    assert stage.process_batch(rows) is rows
    for row in rows:
        assert row["status"] == OK
        assert captions_of(row)["dense"].strip() != ""
        assert json.loads(row["caption_status"])["dense"] in {"ok", "truncated"}
    assert captions_of(rows[0])["alt"] == "a red banner"
    assert "alt" not in captions_of(rows[1])
    assert captions_of(rows[2])["alt"] == "sun"


LLAVA_FAMILIES = [
    "llava",  # llava-1.5: one 336px tile
    "llava_next",  # llava-1.6: AnyRes tiles, image_sizes, a token count that depends on the aspect ratio
    pytest.param(
        "llava_onevision",  # SigLIP + Qwen2 chat template, AnyRes
        marks=pytest.mark.skipif(
            not is_torchvision_available(),
            reason="LlavaOnevisionProcessor needs LlavaOnevisionVideoProcessor, which needs torchvision",
        ),
    ),
]


@pytest.mark.parametrize("family", LLAVA_FAMILIES)
def test_every_llava_family_captions_mixed_sizes_independently_of_the_batch(tiny_models: Path, family: str) -> None:
    stage = ready_stage(tiny_models, model=ModelRef(path=str(tiny_models / family), device="cpu", dtype="float32"))
    specs = [("wide", (320, 90), "red", "a red banner " * 4), ("tall", (50, 200), "blue", None)]
    specs.append(("square", (128, 128), "yellow", "sun"))
    batch = [image_row(key, size, color, alt=alt) for key, size, color, alt in specs]
    stage.process_batch(batch)
    for spec, batched in zip(specs, batch, strict=True):
        assert batched["status"] == OK, batched["detail"]
        assert captions_of(batched)["dense"].strip()
        alone = image_row(*spec[:3], alt=spec[3])
        stage.process_batch([alone])
        assert captions_of(alone)["dense"] == captions_of(batched)["dense"], spec[0]


@pytest.fixture(scope="module")
def right_padded_llava(tiny_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny LLaVA saved with a right-padding tokenizer, as some real checkpoints ship."""
    copy = tmp_path_factory.mktemp("right_padded") / "llava"
    shutil.copytree(tiny_models / "llava", copy)
    tokenizer_config = copy / "tokenizer_config.json"
    settings = json.loads(tokenizer_config.read_text())
    settings["padding_side"] = "right"
    tokenizer_config.write_text(json.dumps(settings))
    return copy


def test_left_padding_caption_independent_of_batch_neighbours(tiny_models: Path, right_padded_llava: Path) -> None:
    stage = ready_stage(tiny_models, model=ModelRef(path=str(right_padded_llava), device="cpu", dtype="float32"))
    assert stage.processor.tokenizer.padding_side == "left"
    alone = image_row("target", (80, 60), "purple")
    stage.process_batch([alone])
    long_alt = "a very long alt text " * 6
    batched_target = image_row("target", (80, 60), "purple")
    batch = [image_row("n1", (30, 90), "white", alt=long_alt), batched_target, image_row("n2", alt=long_alt)]
    stage.process_batch(batch)
    assert batched_target["status"] == OK
    assert captions_of(batched_target)["dense"] == captions_of(alone)["dense"]


def test_row_without_prepared_pixels_fails_alone(stage: CaptionStage) -> None:
    good_before, good_after = image_row("good1"), image_row("good2", (90, 40), "black")
    corrupt = new_row("broken", "mem://broken", b"\xff\xd8\xff\xe0 definitely not a jpeg")
    stage.process_batch([good_before, corrupt, good_after])
    assert "no prepared caption pixels" in corrupt["detail"]
    assert corrupt["status"] == FAILED
    assert corrupt["stage"] == "caption"
    assert corrupt["captions"] is None
    for row in (good_before, good_after):
        assert row["status"] == OK
        assert captions_of(row)["dense"]
        assert row["caption_pixels"] is None and row["caption_shape"] is None


def test_the_stage_never_decodes_the_encoded_image(stage: CaptionStage, monkeypatch: pytest.MonkeyPatch) -> None:
    reference = image_row("ref", (70, 50), "green")
    stage.process_batch([reference])
    row = image_row("ref", (70, 50), "green")
    row["image"] = b"not an image: only the prepared pixels may be used"

    def no_decoding(*args, **kwargs):
        raise AssertionError("the caption stage opened an encoded image")

    monkeypatch.setattr(Image, "open", no_decoding)
    stage.process_batch([row])

    assert row["status"] == OK
    assert captions_of(row)["dense"] == captions_of(reference)["dense"]


def test_failing_generation_is_retried_row_by_row(stage: CaptionStage, monkeypatch: pytest.MonkeyPatch) -> None:
    real_generate = stage._run_generate

    def generate_refusing_poison(prompts, images, job, penalty) -> torch.Tensor:
        if any("poison" in prompt for prompt in prompts):
            raise RuntimeError("out of memory")
        return real_generate(prompts, images, job, penalty)

    monkeypatch.setattr(stage, "_run_generate", generate_refusing_poison)
    rows = [image_row("a"), image_row("b", alt="poison"), image_row("c")]
    stage.process_batch(rows)
    assert [row["status"] for row in rows] == [OK, FAILED, OK]
    assert "out of memory" in rows[1]["detail"]


def test_small_token_budget_marks_caption_truncated(tiny_models: Path) -> None:
    stage = ready_stage(tiny_models, max_new_tokens=2)
    row = image_row("short")
    stage.process_batch([row])
    assert row["status"] == OK
    assert json.loads(row["caption_status"]) == {"dense": "truncated"}
    assert json.loads(row["caption_tokens"]) == {"dense": 2}
    assert "truncated" in json.loads(row["caption_flags"])["dense"]
    assert captions_of(row)["dense"]


def test_caption_ending_with_eos_is_ok(tiny_models: Path) -> None:
    stage = ready_stage(tiny_models, max_new_tokens=3)
    # EOS forced as the last allowed token: two caption tokens, then a proper end.
    stage.model.generation_config.forced_eos_token_id = stage.processor.tokenizer.eos_token_id
    row = image_row("ends")
    stage.process_batch([row])
    assert row["status"] == OK
    assert json.loads(row["caption_status"]) == {"dense": "ok"}
    assert json.loads(row["caption_tokens"]) == {"dense": 3}  # two caption tokens + end-of-sequence
    assert captions_of(row)["dense"]


def test_empty_caption_fails_the_row(tiny_models: Path) -> None:
    stage = ready_stage(tiny_models, max_new_tokens=1)
    # Forcing end-of-sequence as the only new token makes the model produce an empty caption.
    stage.model.generation_config.forced_eos_token_id = stage.processor.tokenizer.eos_token_id
    row = image_row("mute")
    stage.process_batch([row])
    assert row["status"] == FAILED
    assert row["reason"] == "empty_caption"
    assert json.loads(row["caption_status"]) == {"dense": "empty"}
    assert "dense" not in json.loads(row["captions"] or "{}")


def test_existing_captions_are_merged_primary_first_alt_last(stage: CaptionStage) -> None:
    row = image_row("merge", alt="a lamp")
    row["captions"] = json.dumps({"other": "lamp", "dense": "stale"})
    stage.process_batch([row])
    captions = captions_of(row)
    assert list(captions) == ["dense", "other", "alt"]
    assert captions["other"] == "lamp"
    assert captions["alt"] == "a lamp"
    assert captions["dense"] not in {"stale", ""}


def test_non_ok_rows_pass_through_untouched(stage: CaptionStage) -> None:
    rejected = mark(image_row("small"), REJECTED, "filter", "too_small")
    failed = mark(image_row("bad"), FAILED, "filter", "error", "boom")
    snapshots = [dict(rejected), dict(failed)]
    live = image_row("live")
    out = stage.process_batch([rejected, live, failed])
    assert out == [rejected, live, failed]
    assert [rejected, failed] == snapshots
    assert live["captions"] is not None


def test_sampling_is_seeded_per_row(tiny_models: Path) -> None:
    stage = ready_stage(tiny_models, jobs={"dense": {}, "short": {}}, do_sample=True, temperature=1.0)
    first = [image_row("s1"), image_row("s2", alt="x")]
    second = [image_row("s0", (40, 40), "white"), image_row("s1")]
    stage.process_batch(first)
    stage.process_batch(second)
    assert captions_of(second[1])["dense"] == captions_of(first[0])["dense"]
    assert captions_of(second[1])["short"] == captions_of(first[0])["short"]


def test_device_and_dtype_follow_config(stage: CaptionStage, tiny_models: Path) -> None:
    assert stage.model.dtype == torch.float32
    assert stage.model.device.type == "cpu"
    assert not stage.model.training
    bf16 = ready_stage(tiny_models, model=ModelRef(path=str(tiny_models / "llava"), device="cpu", dtype="bfloat16"))
    assert bf16.model.dtype == torch.bfloat16
    row = image_row("bf16")
    bf16.process_batch([row])  # pixel values must be cast to the model dtype
    assert row["status"] == OK, row["detail"]


# --- several captions per image, and captions that depend on the image (and only on it) ---------------


def noise_row(key: str, seed: int, size: tuple[int, int] = (96, 72), alt: str | None = None) -> Row:
    """A row whose prepared caption pixels are seeded noise: distinct seeds, distinct images."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    row = new_row(key, f"mem://{key}", b"unused: the stage reads prepared pixels", alt=alt)
    put_pixels(row, "caption", pixels)
    return row


@pytest.fixture(scope="module")
def two_job_stage(tiny_models: Path) -> CaptionStage:
    return ready_stage(tiny_models, jobs={"dense": {"max_new_tokens": 10}, "short": {"max_new_tokens": 5}})


def test_every_job_writes_its_caption_status_tokens_and_flags(two_job_stage: CaptionStage) -> None:
    row = noise_row("two", seed=1, alt="alt text")
    two_job_stage.process_batch([row])
    assert row["status"] == OK, row["detail"]
    assert list(captions_of(row)) == ["dense", "short", "alt"]
    statuses, tokens = json.loads(row["caption_status"]), json.loads(row["caption_tokens"])
    assert set(statuses) == set(tokens) == set(json.loads(row["caption_flags"])) == {"dense", "short"}
    assert 1 <= tokens["dense"] <= 10 and 1 <= tokens["short"] <= 5
    assert all(status in {"ok", "truncated"} for status in statuses.values())


def test_distinct_images_get_distinct_captions(two_job_stage: CaptionStage) -> None:
    rows = [noise_row(f"n{i}", seed=100 + i) for i in range(6)]
    two_job_stage.process_batch(rows)
    dense = [captions_of(row)["dense"] for row in rows]
    assert len(set(dense)) == len(dense), dense


def test_swapping_two_images_swaps_their_captions(two_job_stage: CaptionStage) -> None:
    first = [noise_row("a", seed=7), noise_row("b", seed=8)]
    swapped = [noise_row("a", seed=8), noise_row("b", seed=7)]
    two_job_stage.process_batch(first)
    two_job_stage.process_batch(swapped)
    assert captions_of(first[0]) != captions_of(first[1])
    assert captions_of(swapped[0]) == captions_of(first[1]) and captions_of(swapped[1]) == captions_of(first[0])


@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_batched_captions_equal_one_by_one(tiny_models: Path, batch_size: int) -> None:
    jobs = {"dense": {"max_new_tokens": 8}, "short": {"max_new_tokens": 4}}
    batched = ready_stage(tiny_models, jobs=jobs, resources=Resources(batch_size=batch_size))
    alone = ready_stage(tiny_models, jobs=jobs, resources=Resources(batch_size=1))
    sizes = [(96, 72), (40, 120), (64, 64), (200, 50), (72, 96), (33, 77), (128, 96), (50, 50), (90, 45)]
    alts = ["a hint" if i % 3 == 0 else None for i in range(len(sizes))]
    rows = [
        noise_row(f"k{i}", seed=i, size=size, alt=alt) for i, (size, alt) in enumerate(zip(sizes, alts, strict=True))
    ]
    batched.process_batch(rows)
    for i, (row, size) in enumerate(zip(rows, sizes, strict=True)):
        single = noise_row(f"k{i}", seed=i, size=size, alt=row["alt"])
        alone.process_batch([single])
        assert row["key"] == single["key"] and captions_of(row) == captions_of(single), row["key"]


def test_cuda_out_of_memory_halves_the_batch_then_fails_only_that_image(
    tiny_models: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stage = ready_stage(tiny_models, resources=Resources(batch_size=8))
    real_generate = stage._run_generate
    seen_sizes = []

    def generate_with_a_memory_limit(prompts, images, job, penalty) -> torch.Tensor:
        seen_sizes.append(len(prompts))
        if len(prompts) > 2 or any("huge" in prompt for prompt in prompts):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return real_generate(prompts, images, job, penalty)

    monkeypatch.setattr(stage, "_run_generate", generate_with_a_memory_limit)
    rows = [noise_row(f"m{i}", seed=i, alt="huge" if i == 5 else None) for i in range(8)]
    stage.process_batch(rows)
    assert [row["status"] for row in rows] == [OK] * 5 + [FAILED] + [OK] * 2
    assert "out of memory at batch size 1" in rows[5]["detail"]
    assert seen_sizes[:3] == [8, 4, 2] and stage.batch_limit == 1  # the huge image failed alone at 1


def test_quality_policy_reject_rejects_flagged_captions(tiny_models: Path) -> None:
    stage = ready_stage(tiny_models, quality={"policy": "reject", "reject_flags": ["truncated"]}, max_new_tokens=2)
    row = noise_row("flagged", seed=3)
    stage.process_batch([row])
    assert (row["status"], row["stage"], row["reason"]) == (REJECTED, "caption", "caption_quality")
    assert row["detail"] == "dense: truncated"


def test_quality_policy_retry_regenerates_flagged_captions_with_a_penalty(
    tiny_models: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stage = ready_stage(tiny_models, quality={"policy": "retry", "reject_flags": ["truncated"]}, max_new_tokens=2)
    penalties = []
    real_generate = stage._run_generate

    def recording_generate(prompts, images, job, penalty) -> torch.Tensor:
        penalties.append(penalty)
        return real_generate(prompts, images, job, penalty)

    monkeypatch.setattr(stage, "_run_generate", recording_generate)
    row = noise_row("retried", seed=4)
    stage.process_batch([row])
    assert penalties == [None, stage.config.quality.retry_repetition_penalty]
    assert row["status"] == OK and json.loads(row["caption_status"]) == {"dense": "truncated"}
