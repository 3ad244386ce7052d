"""`align model import`: a GGUF model (llama.cpp's format) as a plain Hugging Face directory.

transformers reads GGUF files (with the ``gguf`` package) and dequantises them, but refuses to save
a model loaded that way. So the weights are moved into a plain model built from the same config
(without its ``quantization_config``), the tied embeddings re-tied, and model, generation config and
tokenizer (with its chat template) saved: a directory every job, vLLM and transformers load.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from alignment.errors import AlignError

log = logging.getLogger("align.model")

GGUF_MAGIC = b"GGUF"
DTYPES = ("float32", "bfloat16", "float16")
MANIFEST = "import.json"
IMPORTER_VERSION = 1  # bump when the conversion changes: directories imported before are then redone


@dataclass(frozen=True)
class GGUFSource:
    """One GGUF file: the directory transformers is pointed at and the file's name inside it."""

    directory: Path
    name: str

    @property
    def path(self) -> Path:
        return self.directory / self.name


def package_directory(name: str) -> Path | None:
    """The directory of an installed top-level Python package, found without importing it (None if none)."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _check_magic(path: Path) -> None:
    with path.open("rb") as handle:
        head = handle.read(4)
    if head != GGUF_MAGIC:
        raise AlignError(f"{path} is not a GGUF file (it does not start with the bytes 'GGUF'; got {head!r})")


def resolve_source(source: str | Path, gguf_file: str | None = None) -> GGUFSource:
    """Which GGUF file ``source`` means: a ``.gguf`` file, a directory holding one (``gguf_file`` picks
    one of several), or the name of an installed Python package that ships one. Checked before any work."""
    path = Path(source).expanduser()
    if not path.exists():
        package = package_directory(str(source)) if str(source).isidentifier() else None
        if package is None:
            raise AlignError(f"{source}: no such file or directory (nor an installed Python package)")
        path = package
    if path.is_file():
        if gguf_file and gguf_file != path.name:
            raise AlignError(f"--gguf-file {gguf_file} given, but {path} is a file, not a directory")
        _check_magic(path)
        return GGUFSource(path.parent, path.name)
    if gguf_file:
        chosen = path / gguf_file
        if not chosen.is_file():
            found = sorted(p.name for p in path.glob("*.gguf"))
            raise AlignError(f"{chosen} does not exist; .gguf files in {path}: {found or 'none'}")
        _check_magic(chosen)
        return GGUFSource(path, gguf_file)
    found = sorted(p.name for p in path.glob("*.gguf"))
    if not found:
        raise AlignError(f"{path} holds no .gguf file (give a .gguf file, or a directory or installed package with one)")
    if len(found) > 1:
        raise AlignError(f"{path} holds several .gguf files, pick one with --gguf-file: {', '.join(found)}")
    _check_magic(path / found[0])
    return GGUFSource(path, found[0])


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def import_gguf(source: str | Path, out_dir: str | Path, gguf_file: str | None = None, dtype: str = "float32",
                force: bool = False) -> Path:
    """Convert a GGUF model into a plain Hugging Face directory ``out_dir``; returns it.

    A directory already imported from the same file (same SHA-256, dtype and importer version; see
    ``import.json`` in it) is reused; any other non-empty ``out_dir`` is an error unless ``force``.
    """
    if dtype not in DTYPES:
        raise AlignError(f"dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
    gguf = resolve_source(source, gguf_file)
    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise AlignError(f"output {out} exists and is not a directory")
    if importlib.util.find_spec("gguf") is None:
        raise AlignError("reading GGUF files needs the `gguf` package: pip install gguf")
    started = time.perf_counter()
    sha256 = file_sha256(gguf.path)
    wanted = {"source": str(gguf.path), "sha256": sha256, "dtype": dtype, "importer_version": IMPORTER_VERSION}
    manifest = out / MANIFEST
    if out.is_dir() and any(out.iterdir()):
        if not force and _matches(manifest, wanted):
            log.info("model import: %s already imported from %s; reusing it", out, gguf.path)
            return out
        if not force:
            raise AlignError(f"output {out} exists and is not an import of {gguf.path}; "
                             "choose another directory or pass --force to replace it")
        if not (manifest.is_file() or (out / "config.json").is_file()):
            raise AlignError(f"--force replaces only a model directory (with config.json or {MANIFEST}); "
                             f"{out} holds neither, so it is left alone")
    staging = out.with_name(f"{out.name}.partial-{os.getpid()}")  # per process: two imports never share one
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        details = _convert(gguf, staging, dtype)
        (staging / MANIFEST).write_text(json.dumps({
            **wanted, **details, "seconds": round(time.perf_counter() - started, 1)}, indent=2) + "\n")
        if not force and _matches(manifest, wanted):  # another process finished the same import meanwhile
            return out
        shutil.rmtree(out, ignore_errors=True)
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("model import: %s -> %s in %.0f s (%s, %.1fM parameters, chat template: %s)", gguf.path, out,
             time.perf_counter() - started, details["architecture"], details["parameters"] / 1e6,
             "yes" if details["chat_template"] else "none")
    return out


def _matches(manifest: Path, wanted: dict) -> bool:
    """Whether ``manifest`` records an import of the same file, in the same dtype, by this importer version."""
    try:
        recorded = json.loads(manifest.read_text())
    except (OSError, ValueError):
        return False
    return all(recorded.get(key) == wanted[key] for key in ("sha256", "dtype", "importer_version"))


def _convert(gguf: GGUFSource, out: Path, dtype_name: str) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = getattr(torch, dtype_name)
    directory, name = str(gguf.directory), gguf.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=name)
        loaded = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32)
    except (ValueError, KeyError, NotImplementedError, OSError) as error:
        raise AlignError(f"transformers cannot load {gguf.path}: {error}") from None
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    state = loaded.state_dict()
    missing, unexpected = plain.load_state_dict(state, strict=False)
    plain.tie_weights()
    tied = {key for key in missing if getattr(config, "tie_word_embeddings", False) and key.startswith("lm_head.")}
    if set(missing) - tied or unexpected:
        raise AlignError(f"{gguf.path}: weights do not fit a plain {type(plain).__name__}: "
                         f"missing {sorted(set(missing) - tied)[:5]}, unexpected {sorted(unexpected)[:5]}")
    plain.generation_config = loaded.generation_config
    plain.eval()
    with torch.no_grad():  # the conversion must not change a single logit
        ids = torch.tensor([tokenizer("The capital of France is")["input_ids"]])
        difference = (plain(input_ids=ids).logits - loaded(input_ids=ids).logits).abs().max().item()
    if difference > 1e-5:
        raise AlignError(f"{gguf.path}: the converted model's logits differ from the GGUF model's by {difference:.3g}")
    parameters = sum(p.numel() for p in plain.parameters())
    del loaded, state
    plain.to(dtype).save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return {"architecture": type(plain).__name__, "model_type": config.model_type, "parameters": parameters,
            "chat_template": bool(getattr(tokenizer, "chat_template", None)),
            "eos_token": tokenizer.eos_token, "pad_token": tokenizer.pad_token}
