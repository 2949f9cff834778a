"""``create_model(name, pretrained=True)``: local copies first (our weights folder, then the
Hugging Face cache), then the hub, then the official URL; offline, no socket is ever opened.

The hub is a cache folder built by hand in a temporary ``HF_HOME`` (the layout huggingface_hub
writes: ``hub/models--owner--name/snapshots/<commit>/model.safetensors`` + ``refs/main``),
holding state dicts of timm's own models, so the keys are truly timm's.  Every test runs
behind a guard that fails it at the first network look-up or connection.
"""

from __future__ import annotations

import socket
import urllib.error
from pathlib import Path

import huggingface_hub.constants as hf_constants
import pytest
import timm
import torch
from conftest import hub_snapshot
from safetensors.torch import save_file

import convit.weights.hub as hub
from convit.weights.hub import PretrainedNotFoundError, hf_cache_dir
from convit.weights.zoo import create_model, model_spec, weights_dir

URL = "https://dl.fbaipublicfiles.com/convit/convit_tiny.pth"
COMMIT = "0123456789abcdef0123456789abcdef01234567"

pytestmark = pytest.mark.usefixtures("no_network")  # conftest: fails a test at any network use


@pytest.fixture
def env(tmp_path, monkeypatch) -> dict[str, Path]:
    """An empty CONVIT_HOME, an empty HF_HOME with HF_HUB_OFFLINE=1 (both set *after*
    huggingface_hub was imported: its import-time constants still say online and point
    elsewhere), and an official download that fails; ``env['downloads']`` records its calls."""
    home, hf = tmp_path / "convit_home", tmp_path / "hf"
    home.mkdir()
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("CONVIT_HOME", str(home))
    monkeypatch.setenv("HF_HOME", str(hf))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # What huggingface_hub read at import time, in a process started without these variables.
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "import_time_cache"))
    downloads: list[str] = []

    def no_download(url, dst, *args, **kwargs):
        downloads.append(url)
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    return {"home": home, "hf": hf, "downloads": downloads}


def put_in_hub_cache(hf_home: Path, repo_id: str, sd: dict[str, torch.Tensor]) -> Path:
    """Write ``sd`` as ``model.safetensors`` of ``repo_id`` in huggingface_hub's cache layout."""
    snap = hub_snapshot(hf_home / "hub", repo_id, COMMIT)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(snap / "model.safetensors"))
    return snap / "model.safetensors"


def timm_state_dict(name: str, seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return timm.create_model(name).state_dict()


def assert_same_weights(model: torch.nn.Module, sd: dict[str, torch.Tensor]) -> None:
    own = model.state_dict()
    assert set(own) == set(sd)
    for k, v in sd.items():
        assert torch.equal(own[k], v), k


def test_the_hugging_face_cache_is_read_before_any_network(env, monkeypatch):
    sd = timm_state_dict("convit_tiny", seed=1)
    put_in_hub_cache(env["hf"], "timm/convit_tiny.fb_in1k", sd)
    monkeypatch.setattr("huggingface_hub.hf_hub_download", lambda *a, **k: pytest.fail("the hub was asked"))
    model = create_model("convit_tiny", pretrained=True)
    assert env["downloads"] == []  # the official URL comes after the cache (and offline, never)
    assert_same_weights(model, sd)
    found = hub.resolve_pretrained("convit_tiny", model_spec("convit_tiny").pretrained, weights_dir())
    assert found.parent.parent.parent == env["hf"] / "hub" / "models--timm--convit_tiny.fb_in1k"
    assert not (env["home"] / "convit_tiny.pth").exists()
    assert hf_constants.HF_HUB_OFFLINE is False  # huggingface_hub's own flag is left alone


def test_deit_comes_from_the_hub_only(env):
    sd = timm_state_dict("deit_tiny_patch16_224", seed=2)
    put_in_hub_cache(env["hf"], "timm/deit_tiny_patch16_224.fb_in1k", sd)
    model = create_model("deit_tiny", pretrained=True)
    assert env["downloads"] == []  # DeiT has no official URL in the zoo
    assert_same_weights(model, sd)  # timm's DeiT file loads unchanged


def test_local_file_wins_and_the_hub_is_not_asked(env, monkeypatch):
    put_in_hub_cache(env["hf"], "timm/convit_tiny.fb_in1k", timm_state_dict("convit_tiny", seed=3))
    put_in_hub_cache(
        env["hf"], "timm/deit_tiny_patch16_224.fb_in1k", timm_state_dict("deit_tiny_patch16_224", 4)
    )
    torch.manual_seed(5)
    local = create_model("convit_tiny").state_dict()
    torch.save(local, env["home"] / "convit_tiny.pth")
    local_deit = timm_state_dict("deit_tiny_patch16_224", seed=6)
    save_file(local_deit, str(env["home"] / "deit_tiny.safetensors"))  # timm's file, renamed

    def no_hub(*args, **kwargs):
        pytest.fail("the hub was asked although the local file exists")

    monkeypatch.setattr("huggingface_hub.hf_hub_download", no_hub)
    assert_same_weights(create_model("convit_tiny", pretrained=True), local)
    assert_same_weights(create_model("deit_tiny", pretrained=True), local_deit)
    assert env["downloads"] == []


@pytest.fixture
def online(env, monkeypatch) -> list[str]:
    """``env`` with the network allowed in principle: HF_HUB_OFFLINE unset and the hub's host
    resolvable, but both downloads replaced by recorders that fail (the returned list, in call
    order: ``hub:<repo>`` and the official URLs)."""
    calls: list[str] = []
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(hub, "_hub_host_unresolvable", lambda: False)

    def no_hub(repo_id, filename, **kwargs):
        calls.append(f"hub:{repo_id}")
        raise OSError("hub unreachable")

    def no_download(url, dst, *args, **kwargs):
        calls.append(url)
        raise urllib.error.URLError("no network")

    monkeypatch.setattr("huggingface_hub.hf_hub_download", no_hub)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    return calls


def test_online_the_hub_comes_before_the_official_url(env, online, monkeypatch):
    with pytest.raises(PretrainedNotFoundError) as e:
        create_model("convit_tiny", pretrained=True)
    assert online == ["hub:timm/convit_tiny.fb_in1k", URL]
    msg = str(e.value)
    assert (
        msg.index("local file")
        < msg.index("Hugging Face cache")
        < msg.index("Hugging Face hub timm/")
        < msg.index("official download")
    )

    sd = timm_state_dict("convit_tiny", seed=7)

    def from_hub(repo_id, filename, **kwargs):  # the hub answers: the official URL is not tried
        online.append(f"hub:{repo_id}")
        Path(kwargs["cache_dir"]).mkdir(parents=True, exist_ok=True)
        save_file(sd, str(Path(kwargs["cache_dir"]) / "fetched.safetensors"))
        return str(Path(kwargs["cache_dir"]) / "fetched.safetensors")

    monkeypatch.setattr("huggingface_hub.hf_hub_download", from_hub)
    online.clear()
    assert_same_weights(create_model("convit_tiny", pretrained=True), sd)
    assert online == ["hub:timm/convit_tiny.fb_in1k"]


def test_online_the_official_url_is_the_last_resort(env, online, monkeypatch):
    torch.manual_seed(8)
    official = create_model("convit_tiny").state_dict()

    def download(url, dst, *args, **kwargs):
        online.append(url)
        torch.save({"model": official}, dst)  # the official files wrap the state dict

    monkeypatch.setattr(torch.hub, "download_url_to_file", download)
    assert_same_weights(create_model("convit_tiny", pretrained=True), official)
    assert online == ["hub:timm/convit_tiny.fb_in1k", URL]
    assert (env["home"] / "convit_tiny.pth").is_file()  # kept, and read first next time
    online.clear()
    assert_same_weights(create_model("convit_tiny", pretrained=True), official)
    assert online == []


def test_offline_no_socket_is_opened(tmp_path, monkeypatch):
    """HF_HUB_OFFLINE=1 and nothing cached: every source fails without a socket (conftest's
    guard makes creating one fail the test), and the error says what to fetch and where."""
    monkeypatch.setenv("CONVIT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    with pytest.raises(PretrainedNotFoundError) as e:  # the real downloaders, had they been called
        create_model("convit_tiny", pretrained=True)
    assert f"{tmp_path / 'home' / 'convit_tiny.pth'}" in str(e.value) and URL in str(e.value)
    with pytest.raises(FileNotFoundError) as e:
        create_model("hf-hub:someone/convit_model", pretrained=True)
    msg = str(e.value)
    assert "config.json of someone/convit_model" in msg and "HF_HUB_OFFLINE is set" in msg
    assert str(tmp_path / "hf" / "hub" / "models--someone--convit_model" / "snapshots") in msg
    assert "hf download someone/convit_model config.json" in msg


def test_offline_failure_names_every_source_and_where_to_put_the_file(env):
    with pytest.raises(PretrainedNotFoundError) as e:
        create_model("convit_tiny", pretrained=True)
    msg = str(e.value)
    assert isinstance(e.value, FileNotFoundError)  # the CLI prints it as one user error
    assert env["downloads"] == []  # offline: never tried
    repo = env["hf"] / "hub" / "models--timm--convit_tiny.fb_in1k"
    for part in (
        URL,
        "timm/convit_tiny.fb_in1k",
        "model.safetensors",
        "HF_HUB_OFFLINE is set",
        str(env["home"] / "convit_tiny.pth"),
        "$CONVIT_HOME",
        "$HF_HOME",
        f"{repo}/snapshots/<commit>/model.safetensors",
        f"{repo}/refs/main",
        "checkpoint_path=",
    ):
        assert part in msg, (part, msg)
    # The sources are listed in the order they were tried.
    assert msg.index("local file") < msg.index("Hugging Face cache") < msg.index("not asked")

    with pytest.raises(PretrainedNotFoundError) as e:
        create_model("deit_tiny", pretrained=True)
    msg = str(e.value)
    assert "official file" not in msg and "timm/deit_tiny_patch16_224.fb_in1k" in msg
    assert str(env["home"] / "deit_tiny.safetensors") in msg


def test_unresolvable_hub_host_reads_the_cache_at_once(env, monkeypatch):
    """Without HF_HUB_OFFLINE and without DNS: a cached file is read with no look-up at all; a
    missing one is not asked of the hub (huggingface_hub would retry for ~25 s)."""
    monkeypatch.delenv("HF_HUB_OFFLINE")
    for var in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    looked_up: list[str] = []

    def no_dns(host, *args, **kwargs):
        looked_up.append(host)
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    sd = timm_state_dict("convit_tiny", seed=9)
    put_in_hub_cache(env["hf"], "timm/convit_tiny.fb_in1k", sd)
    assert_same_weights(create_model("convit_tiny", pretrained=True), sd)
    assert looked_up == []
    with pytest.raises(PretrainedNotFoundError, match="huggingface.co does not resolve"):
        create_model("deit_tiny", pretrained=True)
    assert looked_up == ["huggingface.co"]


def test_hub_cache_folder_follows_the_environment_at_call_time(tmp_path, monkeypatch):
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "lib"))
    assert hf_cache_dir() == tmp_path / "lib"  # nothing set: huggingface_hub's own setting
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    assert hf_cache_dir() == tmp_path / "home" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    assert hf_cache_dir() == tmp_path / "cache"  # HF_HUB_CACHE beats HF_HOME, as in huggingface_hub
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    monkeypatch.setenv("HF_HUB_CACHE", "~/hfc")
    assert hf_cache_dir() == tmp_path / "user" / "hfc"


def test_no_published_weights_is_still_a_value_error(env):
    with pytest.raises(ValueError, match="no published weights for 'deit_tiny_plus'"):
        create_model("deit_tiny_plus", pretrained=True)
