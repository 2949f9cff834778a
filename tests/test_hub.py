"""``create_model(name, pretrained=True)``: the local file, the official URL, then timm's copy on
the Hugging Face hub, all offline.

The hub is a cache folder built by hand in a temporary ``HF_HOME`` (the layout huggingface_hub
writes: ``hub/models--owner--name/snapshots/<commit>/model.safetensors`` + ``refs/main``),
holding state dicts of timm's own models, so the keys are truly timm's.  Every test runs
behind a guard that fails it at the first network look-up or connection.
"""
from __future__ import annotations

import socket
import urllib.error
from pathlib import Path
from typing import Dict, List

import huggingface_hub.constants as hf_constants
import pytest
import timm
import torch
from safetensors.torch import save_file

from conftest import hub_snapshot
import convit.hub as hub
from convit.hub import PretrainedNotFoundError, hf_cache_dir
from convit.zoo import create_model, model_spec, weights_dir

URL = "https://dl.fbaipublicfiles.com/convit/convit_tiny.pth"
COMMIT = "0123456789abcdef0123456789abcdef01234567"

pytestmark = pytest.mark.usefixtures("no_network")  # conftest: fails a test at any network use


@pytest.fixture
def env(tmp_path, monkeypatch) -> Dict[str, Path]:
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
    downloads: List[str] = []

    def no_download(url, dst, *args, **kwargs):
        downloads.append(url)
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    return {"home": home, "hf": hf, "downloads": downloads}


def put_in_hub_cache(hf_home: Path, repo_id: str, sd: Dict[str, torch.Tensor]) -> Path:
    """Write ``sd`` as ``model.safetensors`` of ``repo_id`` in huggingface_hub's cache layout."""
    snap = hub_snapshot(hf_home / "hub", repo_id, COMMIT)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(snap / "model.safetensors"))
    return snap / "model.safetensors"


def timm_state_dict(name: str, seed: int) -> Dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return timm.create_model(name).state_dict()


def assert_same_weights(model: torch.nn.Module, sd: Dict[str, torch.Tensor]) -> None:
    own = model.state_dict()
    assert set(own) == set(sd)
    for k, v in sd.items():
        assert torch.equal(own[k], v), k


def test_convit_from_the_hub_when_the_official_download_fails(env):
    sd = timm_state_dict("convit_tiny", seed=1)
    put_in_hub_cache(env["hf"], "timm/convit_tiny.fb_in1k", sd)
    model = create_model("convit_tiny", pretrained=True)
    assert env["downloads"] == [URL]  # the official URL was tried first
    assert_same_weights(model, sd)
    found = hub.resolve_pretrained("convit_tiny", model_spec("convit_tiny").pretrained, weights_dir())
    assert found.parent.parent.parent == env["hf"] / "hub" / "models--timm--convit_tiny.fb_in1k"
    assert not (env["home"] / "convit_tiny.pth").exists()  # nothing half-downloaded left behind
    assert hf_constants.HF_HUB_OFFLINE is False  # huggingface_hub's own flag is restored after the call


def test_deit_comes_from_the_hub_only(env):
    sd = timm_state_dict("deit_tiny_patch16_224", seed=2)
    put_in_hub_cache(env["hf"], "timm/deit_tiny_patch16_224.fb_in1k", sd)
    model = create_model("deit_tiny", pretrained=True)
    assert env["downloads"] == []  # DeiT has no official URL in the zoo
    assert_same_weights(model, sd)  # timm's DeiT file loads unchanged


def test_local_file_wins_and_the_hub_is_not_asked(env, monkeypatch):
    put_in_hub_cache(env["hf"], "timm/convit_tiny.fb_in1k", timm_state_dict("convit_tiny", seed=3))
    put_in_hub_cache(env["hf"], "timm/deit_tiny_patch16_224.fb_in1k", timm_state_dict("deit_tiny_patch16_224", 4))
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


def test_official_download_comes_before_the_hub(env, monkeypatch):
    put_in_hub_cache(env["hf"], "timm/convit_tiny.fb_in1k", timm_state_dict("convit_tiny", seed=7))
    torch.manual_seed(8)
    official = create_model("convit_tiny").state_dict()

    def download(url, dst, *args, **kwargs):
        assert url == URL
        torch.save({"model": official}, dst)  # the official files wrap the state dict

    monkeypatch.setattr(torch.hub, "download_url_to_file", download)
    assert_same_weights(create_model("convit_tiny", pretrained=True), official)
    assert (env["home"] / "convit_tiny.pth").is_file()  # kept for next time


def test_offline_failure_names_every_source_and_where_to_put_the_file(env):
    with pytest.raises(PretrainedNotFoundError) as e:
        create_model("convit_tiny", pretrained=True)
    msg = str(e.value)
    assert isinstance(e.value, FileNotFoundError)  # the CLI prints it as one user error
    repo = env["hf"] / "hub" / "models--timm--convit_tiny.fb_in1k"
    for part in (URL, "no network", "timm/convit_tiny.fb_in1k", "model.safetensors", "HF_HUB_OFFLINE is set",
                 str(env["home"] / "convit_tiny.pth"), "$CONVIT_HOME", "$HF_HOME",
                 f"{repo}/snapshots/<commit>/model.safetensors", f"{repo}/refs/main", "checkpoint_path="):
        assert part in msg, (part, msg)
    # The sources are listed in the order they were tried.
    assert msg.index("local file") < msg.index(URL) < msg.index("Hugging Face hub timm/")

    with pytest.raises(PretrainedNotFoundError) as e:
        create_model("deit_tiny", pretrained=True)
    msg = str(e.value)
    assert "official download" not in msg and "timm/deit_tiny_patch16_224.fb_in1k" in msg
    assert str(env["home"] / "deit_tiny.safetensors") in msg


def test_unresolvable_hub_host_reads_the_cache_at_once(env, monkeypatch):
    """Without HF_HUB_OFFLINE and without DNS, huggingface_hub would retry for ~25 s before
    falling back to its cache; the cache is read directly, with no connection attempt."""
    monkeypatch.delenv("HF_HUB_OFFLINE")
    for var in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    looked_up: List[str] = []

    def no_dns(host, *args, **kwargs):
        looked_up.append(host)
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    sd = timm_state_dict("convit_tiny", seed=9)
    put_in_hub_cache(env["hf"], "timm/convit_tiny.fb_in1k", sd)
    assert_same_weights(create_model("convit_tiny", pretrained=True), sd)
    assert looked_up == ["huggingface.co"]
    with pytest.raises(PretrainedNotFoundError, match="huggingface.co does not resolve"):
        create_model("deit_tiny", pretrained=True)


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
