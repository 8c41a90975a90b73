"""`trainer.push_to_hub()` against a local stand-in for the Hub API (reached through `HF_ENDPOINT`)."""

import base64
import hashlib
import json
import os
import subprocess
import sys
import textwrap
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

TOKEN = "hf_FakeTokenThatMustNeverBeWritten123"


class FakeHub:
    """Enough of the Hub's HTTP API for `create_repo` and `upload_folder`; records what is uploaded."""

    def __init__(self, fail_commits: bool = False):
        self.fail_commits = fail_commits
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, str]] = []
        self.authorization: set[str] = set()
        self.validated_yaml = None
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _reply(self, status: int, payload: dict):
                body = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                hub.requests.append(("POST", self.path))
                hub.authorization.add(self.headers.get("Authorization", ""))
                if self.path == "/api/repos/create":
                    name = json.loads(body)
                    repo = f"{name.get('organization') or 'user'}/{name['name']}"
                    return self._reply(200, {"url": f"{hub.url}/{repo}", "name": repo, "id": repo})
                if self.path == "/api/validate-yaml":  # the Hub checks a model card's metadata before upload
                    hub.validated_yaml = json.loads(body)
                    return self._reply(200, {"errors": [], "warnings": []})
                if "/preupload/" in self.path:
                    files = json.loads(body)["files"]
                    return self._reply(
                        200,
                        {
                            "files": [
                                {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files
                            ]
                        },
                    )
                if "/commit/" in self.path:
                    if hub.fail_commits:
                        return self._reply(500, {"error": "simulated outage"})
                    for line in body.decode().splitlines():
                        item = json.loads(line)
                        if item["key"] == "file":
                            hub.files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                    repo = self.path.split("/api/models/")[1].split("/commit/")[0]
                    return self._reply(
                        200, {"commitUrl": f"{hub.url}/{repo}/commit/{'a' * 40}", "commitOid": "a" * 40}
                    )
                return self._reply(404, {"error": f"not faked: {self.path}"})

            def do_GET(self):
                hub.requests.append(("GET", self.path))
                return self._reply(404, {"error": f"not faked: {self.path}"})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()


PUSH_SCRIPT = textwrap.dedent(
    """
    import sys
    from datasets import Dataset
    from peft import LoraConfig
    from srpo_trl import ColorWordReward, SRPOConfig, SRPOTrainer
    from srpo_trl.testing import tiny_flux_pipeline

    output_dir, hub_token, mode = sys.argv[1], sys.argv[2], sys.argv[3]
    args = SRPOConfig(
        output_dir=output_dir, max_steps=1, resolution=64, rollout_steps=2, max_sequence_length=16,
        positive_control_words=["blue"], negative_control_words=["red"], report_to="none", save_strategy="no",
        hub_model_id="user/srpo-tiny", hub_token=hub_token, disable_tqdm=True,
    )
    trainer = SRPOTrainer(
        tiny_flux_pipeline(0), ColorWordReward(), args=args,
        train_dataset=Dataset.from_dict({"prompt": ["a cat", "a dog"]}),
        peft_config=LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian"),
    )
    trainer.train()
    if mode == "push":
        trainer.save_samples(["a red house", "the blue sea"])
        trainer.push_to_hub()
    else:  # save first, then a push that fails
        trainer.save_model()
        import hashlib, json, os
        digest = {n: hashlib.sha256(open(os.path.join(output_dir, n), "rb").read()).hexdigest()
                  for n in os.listdir(output_dir) if os.path.isfile(os.path.join(output_dir, n))}
        print("SAVED " + json.dumps(digest), flush=True)
        import shutil
        shutil.copy(os.path.join(output_dir, "pytorch_lora_weights.safetensors"),
                    os.path.join(os.path.dirname(output_dir), "saved_weights.safetensors"))
        trainer.push_to_hub()
    """
)


def _run_push(tmp_path, hub: FakeHub, mode: str):
    script = tmp_path / "push.py"
    script.write_text(PUSH_SCRIPT)
    env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HUB_DISABLE_XET": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
    env.pop("HF_TOKEN", None)
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, str(script), str(out), TOKEN, mode], env=env, capture_output=True, text=True, timeout=300
    )
    return out, result


def _digest(folder) -> dict[str, str]:
    return {
        os.path.relpath(os.path.join(root, name), folder): hashlib.sha256(
            open(os.path.join(root, name), "rb").read()
        ).hexdigest()
        for root, _, names in os.walk(folder)
        for name in names
    }


@pytest.fixture
def hub():
    fake = FakeHub()
    yield fake
    fake.close()


def test_push_uploads_the_diffusers_folder_and_a_parsable_card(tmp_path, hub):
    out, result = _run_push(tmp_path, hub, "push")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Bearer {TOKEN}" in hub.authorization  # the token was used for the upload...
    uploaded = set(hub.files)
    assert {
        "pytorch_lora_weights.safetensors",
        "README.md",
        "samples/sample_0.png",
        "samples/sample_1.png",
    } <= uploaded
    assert not any(p.startswith(("checkpoint-", ".srpo-staging", "runs/")) for p in uploaded)
    # ...and never written into any uploaded or local file.
    for path, content in hub.files.items():
        assert TOKEN.encode() not in content, path
    for root, _, names in os.walk(out):
        for name in names:
            assert TOKEN.encode() not in open(os.path.join(root, name), "rb").read(), name

    from huggingface_hub import ModelCard

    card = ModelCard(hub.files["README.md"].decode())
    assert card.data.library_name == "diffusers" and card.data.pipeline_tag == "text-to-image"
    assert {"srpo", "trl", "lora"} <= set(card.data.tags)
    assert card.data.widget[0] == {"text": "a red house", "output": {"url": "samples/sample_0.png"}}
    assert (
        "arXiv 2509.06942" in card.text and "load_lora_weights" in card.text and "@article{shen2025srpo" in card.text
    )

    # The uploaded weights load into a stock FluxPipeline.
    from diffusers import FluxPipeline  # noqa: F401

    from srpo_trl.testing import tiny_flux_pipeline

    fetched = tmp_path / "fetched"
    fetched.mkdir()
    (fetched / "pytorch_lora_weights.safetensors").write_bytes(hub.files["pytorch_lora_weights.safetensors"])
    pipe = tiny_flux_pipeline(0)
    pipe.load_lora_weights(str(fetched))
    assert any("lora" in n for n, _ in pipe.transformer.named_parameters())


def test_a_failed_push_leaves_the_local_output_intact(tmp_path):
    hub = FakeHub(fail_commits=True)
    try:
        out, result = _run_push(tmp_path, hub, "fail")
    finally:
        hub.close()
    assert result.returncode != 0 and "500" in result.stderr
    saved = json.loads(result.stdout.split("SAVED ", 1)[1].splitlines()[0])
    now = _digest(out)
    # Every file is still there and, but for the weights, byte-identical; the card was rewritten for the repo id and
    # still parses. `push_to_hub` saves the model again before uploading, and safetensors writes the header's
    # `__metadata__` keys ("format", "lora_adapter_metadata") in a random order (a Rust HashMap), so the rewritten
    # file differs in bytes from the first about half the time: the weights are compared as what they hold, the same
    # tensors and the same LoRA metadata.
    assert set(now) == set(saved)
    weights = "pytorch_lora_weights.safetensors"
    assert {n: d for n, d in now.items() if n not in ("README.md", weights)} == {
        n: d for n, d in saved.items() if n not in ("README.md", weights)
    }
    from safetensors import safe_open

    kept = tmp_path / "saved_weights.safetensors"
    assert kept.is_file()  # the script's copy, made before the push
    for name in (kept, out / weights):
        with safe_open(str(name), "pt") as f:
            held = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
        if name == kept:
            before = held
    assert held[1] == before[1] and held[0].keys() == before[0].keys()
    assert all(torch.equal(held[0][k], before[0][k]) for k in held[0])
    from huggingface_hub import ModelCard

    assert ModelCard.load(str(out / "README.md")).data.library_name == "diffusers"
    from srpo_trl.testing import tiny_flux_pipeline

    pipe = tiny_flux_pipeline(0)
    pipe.load_lora_weights(str(out))  # still loadable after the failure
    assert any("lora" in n for n, _ in pipe.transformer.named_parameters())
