"""The vLLM backend's Ray-agnostic half (requests out of rows, rows out of answers); runs in every venv."""

from __future__ import annotations

import hashlib
import json
import pickle

import numpy as np
import pytest

from curation.caption_quality import GeneratedCaption, settle_row, store_caption
from curation.config import CaptionJob, CaptionQuality
from curation.records import FAILED, OK, REJECTED, Row, mark, new_row, put_pixels
from curation.stages.caption_vllm import (
    ERROR_COLUMN,
    JOB,
    KEY,
    PACKED_ROW,
    PASS_THROUGH,
    REQUEST_COUNT,
    RETRY,
    CaptionCollector,
    build_requests,
    request_plan,
    sampling_params,
)

JOBS = {
    "dense": CaptionJob(prompt="Describe.", prompt_with_alt='Given "{alt}", describe.', max_new_tokens=7),
    "short": CaptionJob(prompt="Name it.", prompt_with_alt='Given "{alt}", name it.', max_new_tokens=3),
}
KEEP = CaptionQuality()
RETRY_TRUNCATED = CaptionQuality(policy="retry", reject_flags=["truncated"])
WORDS = {10: "a", 11: " red", 12: " cat", 13: " sat", 14: " on", 15: " mats", 2: "</s>"}  # 2: end of sequence
EOS = {2}


def decode(tokens: list[int]) -> str:
    """A stand-in detokenizer: the special token 2 is skipped, as skip_special_tokens does."""
    return "".join(WORDS[token] for token in tokens if token not in EOS)


def chat_text(prompt: str) -> str:
    return f"USER: <image>\n{prompt} ASSISTANT:"


def prepared_row(key: str, alt: str | None = None, shape: tuple[int, int, int] = (3, 4, 3)) -> Row:
    row = new_row(key, f"mem://{key}", b"jpeg bytes", alt=alt)
    put_pixels(row, "caption", np.arange(np.prod(shape), dtype=np.uint8).reshape(shape))
    return row


def test_request_plan_adds_every_retry_up_front_under_the_retry_policy() -> None:
    assert request_plan(JOBS, KEEP) == [("dense", False), ("short", False)]
    retries = [("dense", True), ("short", True)]
    assert request_plan(JOBS, RETRY_TRUNCATED) == [("dense", False), ("short", False), *retries]


def test_sampling_params_greedy_or_seeded_from_key_and_job() -> None:
    greedy = {"max_tokens": 7, "temperature": 0.0, "seed": None, "repetition_penalty": 1.0, "detokenize": False}
    assert sampling_params(JOBS["dense"], "k", "dense", None) == greedy
    assert sampling_params(JOBS["dense"], "k", "dense", 1.3)["repetition_penalty"] == 1.3
    sampled = CaptionJob(max_new_tokens=4, do_sample=True, temperature=0.7, repetition_penalty=1.1)
    seed = int.from_bytes(hashlib.sha256(b"k\0short").digest()[:8], "big") % 2**63
    assert sampling_params(sampled, "k", "short", None) == {
        "max_tokens": 4,
        "temperature": 0.7,
        "seed": seed,
        "repetition_penalty": 1.1,
        "detokenize": False,
    }


def test_an_ok_row_becomes_one_request_per_job() -> None:
    row = prepared_row("k1", alt="a red cat")
    pixels = np.frombuffer(row["caption_pixels"], np.uint8).reshape(3, 4, 3).copy()
    requests = build_requests(row, JOBS, KEEP, chat_text)
    assert [(r[JOB], r[RETRY]) for r in requests] == [("dense", False), ("short", False)]
    assert [r["prompt"] for r in requests] == [
        'USER: <image>\nGiven "a red cat", describe. ASSISTANT:',
        'USER: <image>\nGiven "a red cat", name it. ASSISTANT:',
    ]
    assert [r["sampling_params"]["max_tokens"] for r in requests] == [7, 3]
    assert all(r[KEY] == "k1" and r[REQUEST_COUNT] == 2 and r[ERROR_COLUMN] == "" for r in requests)
    for request in requests:
        np.testing.assert_array_equal(np.asarray(request["multimodal_data"]["image"]), pixels)
    packed = pickle.loads(requests[0][PACKED_ROW])
    assert requests[1][PACKED_ROW] is None  # the row travels once
    assert packed["key"] == "k1" and packed["alt"] == "a red cat" and packed["image"] == b"jpeg bytes"
    assert packed["caption_pixels"] is None and packed["caption_shape"] is None  # consumed here


def test_retry_requests_carry_the_quality_penalty() -> None:
    requests = build_requests(prepared_row("k"), JOBS, RETRY_TRUNCATED, chat_text)
    assert [(r[JOB], r[RETRY], r["sampling_params"]["repetition_penalty"]) for r in requests] == [
        ("dense", False, 1.0),
        ("short", False, 1.0),
        ("dense", True, 1.3),
        ("short", True, 1.3),
    ]
    assert {r[REQUEST_COUNT] for r in requests} == {4}
    assert requests[0]["prompt"] == requests[2]["prompt"] == "USER: <image>\nDescribe. ASSISTANT:"


def test_rows_that_are_not_ok_pass_through_untouched() -> None:
    rejected = mark(prepared_row("small"), REJECTED, "filter", "too_small")
    snapshot = dict(rejected)
    (request,) = build_requests(rejected, JOBS, KEEP, chat_text)
    assert request[ERROR_COLUMN] == PASS_THROUGH and request[REQUEST_COUNT] == 1
    served = build_requests(prepared_row("ok"), JOBS, KEEP, chat_text)[0]
    assert request.keys() == served.keys()  # one schema for every request
    assert request["prompt"] is request["multimodal_data"] is request["sampling_params"] is None
    assert pickle.loads(request[PACKED_ROW]) == snapshot


def test_unreadable_pixels_fail_the_row_before_any_request() -> None:
    row = prepared_row("bad")
    row["caption_shape"] = [5, 5, 3]  # 36 bytes cannot be 5x5x3
    (request,) = build_requests(row, JOBS, KEEP, chat_text)
    assert request[ERROR_COLUMN] == PASS_THROUGH
    failed = pickle.loads(request[PACKED_ROW])
    assert (failed["status"], failed["stage"], failed["reason"]) == (FAILED, "caption", "error")
    assert "reshape" in failed["detail"]
    assert failed["image"] is None and failed["caption_pixels"] is None


def answer(request: dict, tokens: list[int] | None) -> dict:
    """A processor output row for a served request (``keep_answer``'s columns)."""
    served = {name: request[name] for name in (KEY, JOB, RETRY, REQUEST_COUNT, PACKED_ROW)}
    return served | {"generated_tokens": tokens, ERROR_COLUMN: ""}


def failure(request: dict, error: str) -> dict:
    """What ray.data.llm returns for a request the engine failed: the request, with the error set."""
    return request | {ERROR_COLUMN: error, "generated_tokens": []}


def maps(row: Row) -> tuple[dict, dict, dict, dict]:
    return tuple(json.loads(row[c]) for c in ("captions", "caption_status", "caption_tokens", "caption_flags"))


def test_rows_are_complete_once_every_job_answered_in_any_order() -> None:
    first = build_requests(prepared_row("k1", alt="cat"), JOBS, KEEP, chat_text)
    second = build_requests(prepared_row("k2"), JOBS, KEEP, chat_text)
    gather = CaptionCollector(JOBS, KEEP, decode, EOS)
    assert gather.add([answer(first[1], [12, 13, 2]), answer(second[0], [10, 11, 12, 13, 14, 15, 13])]) == []
    assert gather.pending == 2
    (row1,) = gather.add([answer(first[0], [10, 11, 12, 2])])
    (row2,) = gather.add([answer(second[1], [12, 13, 13])])
    assert gather.pending == 0
    assert row1["key"] == "k1" and row1["status"] == OK and row2["status"] == OK
    captions, statuses, tokens, flags = maps(row1)
    assert list(captions.items()) == [("dense", "a red cat"), ("short", "cat sat"), ("alt", "cat")]
    assert statuses == {"dense": "ok", "short": "ok"} and tokens == {"dense": 4, "short": 3}
    assert flags == {"dense": [], "short": ["too_short"]}
    captions, statuses, tokens, flags = maps(row2)
    assert captions == {"dense": "a red cat sat on mats sat", "short": "cat sat sat"}
    assert statuses == {"dense": "truncated", "short": "truncated"} and tokens == {"dense": 7, "short": 3}
    assert flags == {"dense": ["truncated"], "short": ["truncated"]}


def hf_order(row: Row, results: dict[str, GeneratedCaption], quality: CaptionQuality) -> Row:
    """What the HF backend does with the same generated captions: store each job in order, then settle."""
    for name, job in JOBS.items():
        if row["status"] == OK:
            prompt = job.prompt_with_alt.format(alt=row["alt"]) if row["alt"] else job.prompt
            store_caption(row, name, results[name], prompt, quality)
    settle_row(row, "caption", quality)
    return row


def test_collected_rows_equal_the_hf_backends_calls_on_the_same_captions() -> None:
    row = prepared_row("k", alt="a red cat")
    requests = build_requests(dict(row), JOBS, KEEP, chat_text)
    (collected,) = CaptionCollector(JOBS, KEEP, decode, EOS).add(
        [answer(requests[0], [10, 11, 12, 2]), answer(requests[1], [12, 12, 12])]
    )
    results = {"dense": GeneratedCaption("a red cat", 4, True), "short": GeneratedCaption("cat cat cat", 3, False)}
    expected = hf_order(dict(row, caption_pixels=None, caption_shape=None), results, KEEP)
    assert collected == expected


def test_a_failed_request_fails_its_row_with_the_engine_error() -> None:
    requests = build_requests(prepared_row("k"), JOBS, KEEP, chat_text)
    error = "ValueError: The decoder prompt (length 900) is longer than the maximum model length of 512."
    (row,) = CaptionCollector(JOBS, KEEP, decode, EOS).add([answer(requests[0], [10, 2]), failure(requests[1], error)])
    assert (row["status"], row["stage"], row["reason"]) == (FAILED, "caption", "error")
    assert row["detail"] == f"short: {error}"
    assert json.loads(row["caption_status"]) == {"dense": "ok", "short": "error"}
    assert row["image"] is None


def test_an_empty_primary_caption_fails_the_row() -> None:
    requests = build_requests(prepared_row("k"), JOBS, KEEP, chat_text)
    (row,) = CaptionCollector(JOBS, KEEP, decode, EOS).add([answer(requests[0], [2]), answer(requests[1], [12])])
    assert (row["status"], row["reason"]) == (FAILED, "empty_caption")
    assert json.loads(row["caption_status"])["dense"] == "empty"


def test_retry_policy_keeps_the_retry_answer_of_flagged_captions_only() -> None:
    requests = build_requests(prepared_row("k"), JOBS, RETRY_TRUNCATED, chat_text)
    by_plan = dict(zip([(r[JOB], r[RETRY]) for r in requests], requests, strict=True))
    outputs = [
        answer(by_plan["dense", False], [10, 11, 11, 11, 11, 11, 11]),  # truncated: counted, regenerated
        answer(by_plan["short", False], [12, 13, 2]),  # finished: kept
        answer(by_plan["dense", True], [10, 11, 12, 2]),
        answer(by_plan["short", True], [15, 2]),
    ]
    (row,) = CaptionCollector(JOBS, RETRY_TRUNCATED, decode, EOS).add(reversed(outputs))
    captions, statuses, tokens, flags = maps(row)
    assert captions == {"dense": "a red cat", "short": "cat sat"}
    assert statuses == {"dense": "ok", "short": "ok"} and tokens == {"dense": 4, "short": 3}
    assert flags == {"dense": [], "short": ["too_short"]}


def test_pass_through_requests_come_back_as_their_row() -> None:
    failed = mark(prepared_row("f"), FAILED, "filter", "error", "boom")
    (request,) = build_requests(failed, JOBS, KEEP, chat_text)
    assert CaptionCollector(JOBS, KEEP, decode, EOS).add([request]) == [failed]


@pytest.mark.parametrize("tokens", [[], None])
def test_a_served_request_without_tokens_is_an_empty_caption(tokens) -> None:
    requests = build_requests(prepared_row("k"), JOBS, KEEP, chat_text)
    (row,) = CaptionCollector(JOBS, KEEP, decode, EOS).add([answer(requests[0], tokens), answer(requests[1], [12])])
    assert row["reason"] == "empty_caption"


def test_engine_arguments_follow_the_model_ref() -> None:
    from curation.config import CaptionConfig, ModelRef
    from pipelines.vllm_caption import engine_kwargs

    plain = CaptionConfig(model=ModelRef(path="llava-hf/llava-1.5-7b-hf", revision="abc123"))
    on_gpu = engine_kwargs(plain, on_gpu=True)
    assert on_gpu == {
        "dtype": "bfloat16", "limit_mm_per_prompt": {"image": 1}, "trust_remote_code": False, "revision": "abc123",
    }  # fmt: skip
    trusted = CaptionConfig(model=ModelRef(path="org/custom-vlm", trust_remote_code=True, dtype="float16"))
    on_cpu = engine_kwargs(trusted, on_gpu=False)
    assert (on_cpu["trust_remote_code"], on_cpu["dtype"], on_cpu["enforce_eager"]) == (True, "float16", True)
    with pytest.raises(ValueError, match=r"point model\.path at it"):
        engine_kwargs(CaptionConfig(model=ModelRef(path="org/repo", subfolder="llm")), on_gpu=True)
