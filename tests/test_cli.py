"""The terminal: one-line errors a person can act on (exit 2, no traceback unless --debug), the end-of-build
summary, quiet Ray logs. Every error here is raised before Ray starts."""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from curation.cli import main, one_line
from curation.io.layout import read_rejects
from curation.terminal import TOP_REASONS, build_summary, progress, quiet_ray, worker_logs_wanted

ROOT = Path(__file__).resolve().parents[1]
DEMO = str(ROOT / "configs/demo.yaml")


def fake_models(root: Path) -> dict[str, Path]:
    """Model folders with the subfolders the stages open (the checks look at folders, not weights)."""
    pipeline = root / "pipeline"
    for folder in ("tokenizer", "text_encoder", "vae"):
        (pipeline / folder).mkdir(parents=True)
    (root / "llava").mkdir()
    return {"caption": root / "llava", "pipeline": pipeline}


def build_args(tmp_path: Path, *sets: str) -> list[str]:
    models = fake_models(tmp_path / "models")
    overrides = [
        "tiny_models_dir=null",
        f"caption.model.path={models['caption']}",
        f"t5.model.path={models['pipeline']}",
        f"vae.model.path={models['pipeline']}",
        *sets,
    ]
    args = ["build", DEMO, "--input", str(ROOT / "examples/images"), "--output", str(tmp_path / "out")]
    return args + [item for assignment in overrides for item in ("--set", assignment)]


def error_line(capsys: pytest.CaptureFixture, argv: list[str]) -> str:
    """The one stderr line of a refused command (exit status 2)."""
    assert main(argv) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.parametrize(
    ("sets", "expected"),
    [
        (
            ["caption.max_new_tokenz=3"],
            "curate build: invalid config: caption.max_new_tokenz: unknown key "
            "(valid: model, backend, resources, jobs, quality, max_image_side)",
        ),
        (["flavor"], "curate build: --set expects dotted.key=value, got 'flavor'"),
        (
            ["filter.min_side=big"],
            "curate build: invalid config: filter.min_side: Input should be a valid integer, "
            "unable to parse string as an integer",
        ),
    ],
)
def test_config_errors(tmp_path, capsys, sets, expected):
    assert error_line(capsys, build_args(tmp_path, *sets)) == expected


def test_missing_input(tmp_path, capsys):
    args = build_args(tmp_path)
    args[args.index("--input") + 1] = str(tmp_path / "nowhere")
    assert error_line(capsys, args) == f"curate build: input '{tmp_path / 'nowhere'}' does not exist"


def test_missing_local_model_path(tmp_path, capsys):
    line = error_line(capsys, build_args(tmp_path, f"vae.model.path={tmp_path}/no-such-vae"))
    assert (
        line == f"curate build: vae.model: {tmp_path}/no-such-vae not found (a local path; hub ids look like org/name)"
    )


def test_missing_subfolder_names_what_is_there_and_the_key_to_set(tmp_path, capsys):
    line = error_line(capsys, build_args(tmp_path, "vae.model.subfolder=vea"))
    pipeline = tmp_path / "models" / "pipeline"
    assert line == (
        f"curate build: vae.model: {pipeline} has no subfolder 'vea' (it has: text_encoder, tokenizer, vae); "
        "set vae.model.subfolder to one of them, or to null for the folder itself"
    )
    line = error_line(capsys, build_args(tmp_path / "t5", "t5.tokenizer_subfolder=tok"))
    assert "t5.model: " in line and "no subfolder 'tok'" in line and "set t5.tokenizer_subfolder to" in line


def test_hub_id_offline_and_not_cached(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    line = error_line(capsys, build_args(tmp_path, "t5.model.path=nobody-here/no-such-model-4f1a"))
    assert line == (
        "curate build: t5.model: nobody-here/no-such-model-4f1a is not in the local Hugging Face cache and the hub "
        "is offline (HF_HUB_OFFLINE): download it first (hf download nobody-here/no-such-model-4f1a) or give a "
        "local path"
    )


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # nothing listens there once the socket is closed


def hub_online(monkeypatch, endpoint: str) -> None:
    """The hub at ``endpoint``, online (huggingface_hub read the offline flag at import: set it as well)."""
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_ENDPOINT", endpoint)


def test_hub_unreachable_and_not_cached(tmp_path, capsys, monkeypatch):
    hub_online(monkeypatch, f"http://127.0.0.1:{closed_port()}")
    line = error_line(capsys, build_args(tmp_path, "vae.model.path=nobody-here/no-such-vae-4f1a"))
    assert line.startswith(
        "curate build: vae.model: nobody-here/no-such-vae-4f1a is not in the local Hugging Face cache and the hub "
        "cannot be reached"
    )


class FakeHub(BaseHTTPRequestHandler):
    """The hub's model-info endpoint: one repo with a ``vae`` folder; any other repo does not exist."""

    def do_GET(self) -> None:
        if self.path.startswith("/api/models/org/pipeline"):
            body = {"id": "org/pipeline", "sha": "0" * 40, "siblings": [{"rfilename": "vae/config.json"}]}
            self._reply(200, json.dumps(body).encode(), {"Content-Type": "application/json"})
        else:
            self._reply(404, b'{"error": "Repository not found"}', {"X-Error-Code": "RepoNotFound"})

    def _reply(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def fake_hub(monkeypatch):
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    hub_online(monkeypatch, f"http://127.0.0.1:{server.server_address[1]}")
    yield
    server.shutdown()


def test_wrong_hub_id_and_missing_hub_subfolder(tmp_path, capsys, fake_hub):
    line = error_line(capsys, build_args(tmp_path, "caption.model.path=nobody-here/llava-typo"))
    assert line == (
        "curate build: caption.model: nobody-here/llava-typo is not a model on the Hugging Face hub "
        "(a typo? a private repo needs hf auth login)"
    )
    line = error_line(capsys, build_args(tmp_path / "2", "vae.model.path=org/pipeline", "vae.model.subfolder=vea"))
    assert line.startswith("curate build: vae.model: org/pipeline has no subfolder 'vea' (it has: vae)")


def test_export_of_a_non_dataset(tmp_path, capsys):
    line = error_line(capsys, ["export", "pixart", str(tmp_path), str(tmp_path / "dest"), "--flavor", "sigma"])
    assert line.startswith("curate export: ") and "manifest.json" in line


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        main(["inspect", str(tmp_path / "missing"), "--debug"])


def test_an_actor_failure_reads_as_its_cause():
    from ray.exceptions import RayTaskError

    cause = OSError("Error no file named diffusion_pytorch_model.safetensors found in directory /m/vae.")
    remote = "Traceback (most recent call last):\n  File ...\nOSError: Error no file named ... (remote)"
    error = RayTaskError("MapWorker(StageActor).__init__", remote, cause)
    assert (
        one_line(error)
        == "OSError: Error no file named diffusion_pytorch_model.safetensors found in directory /m/vae."
    )
    wrapped = RuntimeError("execution failed")
    wrapped.__cause__ = error
    assert one_line(wrapped) == one_line(error)
    from ray.data.exceptions import SystemException

    died = RayTaskError("MapWorker(StageActor).__init__", remote.replace("... (remote)", "bad config"), cause)
    assert one_line(died.as_instanceof_cause()) == f"OSError: {cause}"
    reraised = ValueError("Unrecognized model type for subconfig: nonexistent_arch.")
    reraised.__cause__ = SystemException()  # how Ray Data re-raises an actor's error
    assert one_line(reraised) == "ValueError: Unrecognized model type for subconfig: nonexistent_arch."


def test_quiet_ray_keeps_info_off_the_console_unless_verbose():
    quiet_ray(verbose=False)
    console = [h for h in logging.getLogger("ray.data").handlers if h.get_name() == "console"]
    assert console and all(h.level == logging.WARNING for h in console)
    assert all(h.level == logging.WARNING for h in logging.getLogger("ray").handlers)
    record = logging.LogRecord("ray.data.exceptions", logging.ERROR, __file__, 1, "Full stack trace:", None, None)
    assert not any(h.filter(record) for h in console)  # a failed run's tracebacks: curate says it in one line
    assert not worker_logs_wanted()
    quiet_ray(verbose=True)
    assert all(h.level == logging.INFO and h.filter(record) for h in console) and worker_logs_wanted()


def test_build_summary_of_the_demo(demo_dataset: Path, capsys):
    """The demo build wrote its report; the summary's lines are the dataset's own numbers."""
    manifest = json.loads((demo_dataset / "manifest.json").read_text())
    report = demo_dataset / "report" / "index.html"
    assert report.is_file()
    counts = manifest["counts"]
    rejects = read_rejects(str(demo_dataset), ["status", "reason"]).to_pylist()
    reasons = Counter(r["reason"] for r in rejects if r["status"] == "rejected")
    lines = build_summary(manifest, str(demo_dataset), str(report)).splitlines()
    assert lines[0].split()[:3] == ["stage", "rows", "in"]
    share = 100 * counts["written"] / counts["input"]
    assert f"written   {counts['written']} of {counts['input']} inputs ({share:.1f}%); " in lines[-5]
    ranked = sorted(reasons.items(), key=lambda i: (-i[1], i[0]))
    top = ", ".join(f"{r} {n}" for r, n in ranked[:TOP_REASONS])
    rest = f", and {len(ranked) - TOP_REASONS} other reason(s)" if len(ranked) > TOP_REASONS else ""
    assert lines[-4] == "rejected  " + top + rest
    duplicates = reasons["duplicate"] + reasons["near_duplicate"]
    assert duplicates == 1  # the demo's downscaled re-encoded astronaut
    assert lines[-3] == f"dedup     {duplicates} duplicate(s) removed"
    assert lines[-2] == f"output    {demo_dataset}  ({len(list((demo_dataset / 'shards').glob('*.tar')))} shards)"
    assert lines[-1] == f"report    {report}"


def test_progress_yields_everything_and_draws_nothing_off_a_terminal(capsys):
    assert list(progress(range(5), desc="export", unit="shard")) == [0, 1, 2, 3, 4]
    assert capsys.readouterr().err == ""  # pytest's stderr is not a terminal
