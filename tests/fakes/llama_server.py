"""A real llama.cpp server (llama-cpp-python ``[server]``) over a tiny GGUF converted at test time.

The converter is llama.cpp's own ``convert_hf_to_gguf.py``, vendored in llama-cpp-python's source
distribution: the sdist of the installed version is fetched with pip (from pip's cache after the build
that installed it) and the converter run on a checkpoint from :mod:`tests.fakes.tiny_lm`. Two things in
the run are pinned for the tiny test tokenizer, which no real model uses: its BPE pre-tokenizer is
declared GPT-2's (the converter recognises known tokenizers by a hash), and the Qwen2 vocabulary is read
as BPE directly (the converter tries SentencePiece first).
"""

from __future__ import annotations

import importlib.metadata
import socket
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

_WRAPPER = """
import sys
root = sys.argv[1]
sys.path[:0] = [root + "/gguf-py", root]
import conversion.base as base
import conversion.{module} as family
base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "gpt-2"
family.{model}.set_vocab = lambda self: self._set_vocab_gpt2()
import convert_hf_to_gguf as cv
sys.argv = ["convert_hf_to_gguf.py", *sys.argv[2:]]
cv.main()
"""
"""Runs the vendored converter on our tiny checkpoints, whose BPE vocabularies it would not recognise by hash."""


def llama_cpp_version() -> str | None:
    """The installed llama-cpp-python version, or None."""
    try:
        return importlib.metadata.version("llama-cpp-python")
    except importlib.metadata.PackageNotFoundError:
        return None


def converter(cache: Path) -> Path:
    """The folder holding ``convert_hf_to_gguf.py``, ``conversion/`` and ``gguf-py/`` of the installed version."""
    version = llama_cpp_version()
    if version is None:
        raise RuntimeError("llama-cpp-python is not installed: pip install -e '.[dev]' builds it")
    root = cache / f"llama.cpp-{version}"
    if (root / "convert_hf_to_gguf.py").is_file():
        return root
    cache.mkdir(parents=True, exist_ok=True)
    pip = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-q", "-d", str(cache)]
    subprocess.run([*pip, f"llama-cpp-python=={version}"], check=True, capture_output=True, timeout=600)
    sdist = next(cache.glob(f"llama_cpp_python-{version}.tar.gz"))
    prefix = f"llama_cpp_python-{version}/vendor/llama.cpp/"
    wanted = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/")
    with tarfile.open(sdist) as tar:
        for m in tar.getmembers():
            rel = m.name[len(prefix) :] if m.name.startswith(prefix) else ""
            if rel and rel.startswith(wanted) and (m.isfile() or m.isdir()):
                m.name = rel
                tar.extract(m, root, filter="data")
    return root


def convert(hf_dir: Path, out: Path, cache: Path, *, module: str, model: str, extra: tuple[str, ...] = ()) -> Path:
    """One f32 GGUF from a checkpoint folder (weights exactly as in the checkpoint), with the vendored converter;
    ``module``/``model``: the converter's class for the family (``extra``: e.g. ``--mmproj``)."""
    root = converter(cache)
    wrapper = cache / f"convert_{module}.py"
    wrapper.write_text(_WRAPPER.format(module=module, model=model))
    cmd = [sys.executable, str(wrapper), str(root), str(hf_dir), *extra, "--outfile", str(out), "--outtype", "f32"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if r.returncode != 0 or not out.is_file():
        raise RuntimeError(f"GGUF conversion failed ({out.name}): {r.stderr[-2000:]}")
    return out


def make_gguf(hf_dir: Path, out: Path, cache: Path) -> Path:
    """Convert a tiny Qwen2 text checkpoint to an f32 GGUF."""
    return convert(hf_dir, out, cache, module="qwen", model="Qwen2Model")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def llama_server(gguf: Path, *args: str, logits_all: bool = True) -> Iterator[str]:
    """Run ``python -m llama_cpp.server`` on the GGUF; yields its OpenAI base URL (``.../v1``)."""
    port = _free_port()
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1"]
    cmd += ["--port", str(port), "--n_ctx", "2048", "--verbose", "False", "--logits_all", str(logits_all), *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"llama.cpp server exited: {proc.stdout.read() if proc.stdout else ''}")
            try:
                if httpx.get(f"{url}/models", timeout=1.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("llama.cpp server did not start within 120 s")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
