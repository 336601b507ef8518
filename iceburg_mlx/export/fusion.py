"""`fuse()`: base model + adapter -> a Hugging Face directory, or a GGUF file with an Ollama Modelfile.

    from iceburg_mlx.export import fuse, FuseOptions
    result = fuse(FuseOptions(model="smollm2", adapter="runs/oracle/adapter", out="dist/oracle",
                              to_gguf=True, quant="q4_k_m"))

The adapter is merged with each layer's `fuse()`: a quantized base is dequantized, updated and
requantized (or left dense with `dequantize`). For GGUF output the merged layers are left dense and
quantized once into the preset's types; the `q4_1` preset keeps every tensor of a Q4_1 base that
no adapter changed as it is (MLX's 4-bit group-32 arrays are Q4_1's blocks), so an adapter-free
export of a Q4_1 GGUF reproduces its bytes, and with an adapter only the adapted layers are
requantized (with the importance matrix, not MLX's min-max rounding). The export records its
provenance (base, adapter, recipe, quant, sha256) in `fuse.json` beside the output and, for GGUF,
under `iceburg.*` keys in the file.

Quantized GGUF presets whose tensors are requantized from floats (q4_0, q4_k_m, q6_k, and q4_1
with an adapter) first run calibration text through the fused model to collect an importance
matrix (`export.imatrix`) and quantize with it, as `llama-quantize --imatrix` does;
`imatrix=False` gives llama.cpp's reference quantizers (the same bytes as `llama-quantize`
without one).
"""

from __future__ import annotations

import datetime as _dt
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gguf import GGUFValueType as V

from iceburg_mlx.errors import ExportError
from iceburg_mlx.export import imatrix as imatrix_mod
from iceburg_mlx.export import mix
from iceburg_mlx.atomic import WriteError, check_writable, ensure_dir, write_json, write_text
from iceburg_mlx.export.gguf_export import GGUFResult, write_gguf
from iceburg_mlx.hashing import sha256_file, weights_sha256
from iceburg_mlx.export.gguf_vocab import (
    KV,
    chat_template_of,
    from_gguf_metadata,
    from_hf_dir,
)
from iceburg_mlx.export.hf_dir import HFResult, save_hf_dir
from iceburg_mlx.export.modelfile import Modelfile, build_modelfile
from iceburg_mlx.export.tensors import gguf_arch

PROVENANCE_FILE = "fuse.json"
RECIPE_FILE = "recipe.yaml"


@dataclass(frozen=True)
class FuseOptions:
    out: str | Path
    model: str | None = None            # any load_model spec (default: the embedded SmolLM2)
    adapter: str | None = None          # adapter directory or registry name (name@version)
    to_gguf: bool = False
    quant: str = "f16"                  # GGUF preset (mix.PRESETS)
    dequantize: bool = False            # leave a quantized base dense in the HF output
    name: str | None = None             # output base name (default: iceburg-<role>, or from the model)
    system: str | None = None           # Modelfile SYSTEM (default: the adapter's training prompt; "" none)
    temperature: float | None = None    # Modelfile sampling defaults
    top_p: float | None = None
    imatrix: bool = True                # importance-weighted quantization (quantized GGUF presets)
    calibration: str | None = None      # its text: .jsonl/.txt/dir (default: the shipped data/)
    calibration_tokens: int = imatrix_mod.DEFAULT_TOKENS
    force: bool = False                 # fuse an adapter trained on another base (a warning, not an error)


@dataclass
class FuseResult:
    out: Path
    format: str                          # "gguf" | "hf"
    files: list[Path] = field(default_factory=list)
    gguf: GGUFResult | None = None
    hf: HFResult | None = None
    modelfile: Modelfile | None = None
    provenance: dict = field(default_factory=dict)
    ollama_command: str | None = None
    n_fused: int = 0
    notes: list[str] = field(default_factory=list)   # things the user should know (the CLI prints them)


Progress = Callable[[str, int, int], None]


def _base_record(loaded) -> dict:
    src = loaded.source
    path = Path(src.path) if src.path else None
    digest = weights_sha256(path)
    return {"spec": src.spec, "kind": src.kind, "path": str(path) if path else None, "sha256": digest}


def _adapter_record(spec: str, path: Path) -> dict:
    from iceburg_mlx.adapters.files import read_adapter_config

    cfg = read_adapter_config(path)
    weights = path / "adapters.safetensors"
    recipe = path / RECIPE_FILE
    return {"spec": spec, "path": str(path), "sha256": sha256_file(weights),
            "fine_tune_type": cfg.get("fine_tune_type", "lora"),
            "recipe": recipe.read_text(encoding="utf-8") if recipe.is_file() else None}


def _compute_for(opts: FuseOptions, preset: mix.Preset | None) -> str:
    keep = (opts.to_gguf and preset is not None and preset.name == "q4_1") or not opts.to_gguf
    return "quantized" if keep and not opts.dequantize else "float32"


def _base_name(opts: FuseOptions, loaded, adapter_path: Path | None, role: dict) -> str:
    """--name; else `iceburg-<role>` for a role adapter (its recipe's role.name), the adapter
    directory's name for another adapter, the base file's stem without its quant type for none."""
    if opts.name:
        return opts.name
    if role.get("name"):
        return f"iceburg-{role['name']}"
    if adapter_path is not None:
        return adapter_path.name
    stem = Path(loaded.source.path).stem if loaded.source.path else loaded.source.spec
    return re.sub(r"\.(F16|F32|BF16|Q\d\w*)$", "", stem, flags=re.IGNORECASE) or "model"


def _vocab(loaded) -> list[KV]:
    src = loaded.source
    if src.kind == "gguf":
        from iceburg_mlx.models.gguf_file import read_gguf

        return from_gguf_metadata(read_gguf(src.path).metadata)
    return from_hf_dir(Path(src.path), loaded.config, int(loaded.config["vocab_size"]))


def _sampling_defaults(loaded, opts: FuseOptions) -> tuple[float | None, float | None]:
    gen: dict[str, Any] = {}
    if loaded.source.kind != "gguf" and loaded.source.path:
        f = Path(loaded.source.path) / "generation_config.json"
        if f.is_file():
            try:
                gen = json.loads(f.read_text(encoding="utf-8"))
            except ValueError:
                gen = {}
    temp = opts.temperature if opts.temperature is not None else gen.get("temperature")
    top_p = opts.top_p if opts.top_p is not None else gen.get("top_p")
    return temp, top_p


def _iceburg_kvs(prov: dict) -> list[KV]:
    base, adapter = prov["base"], prov.get("adapter") or {}
    pairs = [("iceburg.version", prov["tool"]), ("iceburg.base", base["spec"]),
             ("iceburg.base_sha256", base["sha256"] or ""), ("iceburg.quant", prov["quant"])]
    if adapter:
        pairs += [("iceburg.adapter", adapter["spec"]), ("iceburg.adapter_sha256", adapter["sha256"]),
                  ("iceburg.fine_tune_type", adapter["fine_tune_type"])]
        if adapter.get("recipe"):
            pairs.append(("iceburg.recipe", adapter["recipe"]))
    kvs = [KV(k, str(v), V.STRING) for k, v in pairs]
    imx = prov.get("imatrix")
    if imx:  # llama-quantize's keys for a file quantized with an importance matrix
        kvs += [KV("quantize.imatrix.dataset", imx["source"], V.STRING),
                KV("quantize.imatrix.entries_count", int(imx["entries"]), V.INT32),
                KV("quantize.imatrix.chunks_count", int(imx["chunks"]), V.INT32)]
    return kvs


def _uses_importance(opts: FuseOptions, preset: mix.Preset | None, fused: bool) -> bool:
    """Whether any tensor will be requantized from floats into a type with an importance path: all
    of them when the base was loaded as floats, the adapted ones (`fused`) when it stayed quantized."""
    from gguf import GGMLQuantizationType as Q

    return (opts.to_gguf and opts.imatrix and preset is not None and preset.quantized
            and preset.default != Q.Q8_0 and (fused or _compute_for(opts, preset) == "float32"))


def _importance(loaded, opts: FuseOptions, notes: list[str]) -> tuple[dict, dict | None]:
    """(importance by tensor, its provenance), or ({}, None) with a note when no calibration data
    is at hand and none was asked for."""
    if opts.calibration is None and imatrix_mod.default_source() is None:
        notes.append("no importance matrix: the shipped calibration data is not installed here "
                      "(pass --calibration FILE); quantized with the reference quantizers")
        return {}, None
    cal = imatrix_mod.calibration_ids(loaded.tokenizer, opts.calibration, opts.calibration_tokens)
    imp = imatrix_mod.collect(loaded.model, cal.ids)
    n_chunks = -(-len(cal.ids) // imatrix_mod.DEFAULT_CTX)
    return imp, {**cal.record(), "entries": len(imp), "chunks": n_chunks, "n_ctx": imatrix_mod.DEFAULT_CTX}


def _ollama_name(name: str) -> str:
    return re.sub(r"[^a-z0-9._-]+", "-", name.lower()).strip("-") or "model"


def fuse(opts: FuseOptions, progress: Progress | None = None) -> FuseResult:
    """Merge the adapter (if any) into the base and write the export described by `opts`."""
    import iceburg_mlx
    from iceburg_mlx.models import load_model

    preset = mix.preset(opts.quant) if opts.to_gguf else None
    adapter_path, role = None, {}
    if opts.adapter:
        from iceburg_mlx.adapters import adapter_role, resolve_adapter_path

        adapter_path = resolve_adapter_path(opts.adapter)
        role = adapter_role(str(adapter_path))
    try:
        out = check_writable(opts.out)   # before minutes of loading and quantizing
    except WriteError as e:
        raise ExportError(f"--out {e}") from None
    if opts.calibration_tokens < 1:   # bad calibration options fail before the model loads
        raise ExportError(f"--calibration-tokens must be positive, got {opts.calibration_tokens}")
    if opts.calibration is not None and not Path(opts.calibration).expanduser().exists():
        raise ExportError(f"{opts.calibration}: calibration data not found")
    loaded = load_model(opts.model, compute=_compute_for(opts, preset))
    if opts.to_gguf:
        gguf_arch(loaded.config)  # fail before anything is written
    n_fused = 0
    notes: list[str] = []
    if adapter_path is not None:
        from iceburg_mlx.adapters import check_base
        from iceburg_mlx.adapters.layers import fuse_model
        from iceburg_mlx.adapters.files import load_adapters

        warning = check_base(adapter_path, loaded.source.spec, loaded.source.path, opts.adapter, opts.force,
                             loaded.model)
        if warning:
            notes.append(warning)
        load_adapters(loaded.model, adapter_path)
        # for GGUF the adapted layers stay dense and are quantized once, by the exporter; in the
        # q4_1 preset the layers no adapter touches keep their Q4_1 / Q8_0 blocks as they are
        n_fused = fuse_model(loaded.model, dequantize=opts.dequantize or opts.to_gguf)
        loaded.model.eval()
    importance, imx = {}, None
    if _uses_importance(opts, preset, n_fused > 0):
        importance, imx = _importance(loaded, opts, notes)
    elif opts.calibration is not None:
        notes.append("--calibration is unused: no tensor of this export is requantized with an importance matrix")
    prov: dict[str, Any] = {
        "tool": f"iceburg-mlx {iceburg_mlx.__version__}",
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "base": _base_record(loaded),
        "adapter": _adapter_record(opts.adapter, adapter_path) if adapter_path else None,
        "quant": preset.name if preset else ("dequantized" if opts.dequantize else "as loaded"),
        "format": "gguf" if opts.to_gguf else "hf",
    }
    if opts.to_gguf:
        prov["imatrix"] = imx
    name = _base_name(opts, loaded, adapter_path, role)
    system = opts.system if opts.system is not None else role.get("system_prompt")
    if system is not None and not (isinstance(system, str) and system.strip()):
        system = None
    prov.update({"name": name, "role": role.get("name"), "system_prompt": system})
    result = FuseResult(out=out, format=prov["format"], provenance=prov, n_fused=n_fused, notes=notes)
    ensure_dir(out)
    if opts.to_gguf:
        vocab = _vocab(loaded)
        file = out / f"{name}.{preset.name.upper()}.gguf"
        g = write_gguf(loaded.model, loaded.config, file, preset.name, vocab, name=name,
                       extra=_iceburg_kvs(prov), progress=progress, importance=importance)
        result.gguf = g
        prov["files"] = {file.name: g.sha256}
        prov["tensor_types"] = g.types
        prov["lossless_tensors"] = g.lossless
        template = next((kv.value for kv in vocab if kv.key == "tokenizer.chat_template"), None)
        tok = loaded.tokenizer._tokenizer
        temp, top_p = _sampling_defaults(loaded, opts)
        mf = build_modelfile(file.name, template, bos=tok.bos_token or "", eos=tok.eos_token or "",
                             system=system, temperature=temp, top_p=top_p,
                             comment=f"iceburg-mlx fuse: {prov['base']['spec']}"
                             + (f" + {opts.adapter}" if opts.adapter else "") + f" ({preset.name})")
        write_text(out / "Modelfile", mf.text)
        result.modelfile = mf
        result.files = [file, out / "Modelfile"]
        result.ollama_command = f"ollama create {_ollama_name(name)} -f {out / 'Modelfile'}"
    else:
        src_dir = Path(loaded.source.path) if loaded.source.kind != "gguf" and loaded.source.path else None
        template = chat_template_of(src_dir) if src_dir else None
        h = save_hf_dir(loaded.model, loaded.config, loaded.tokenizer, out, source_dir=src_dir,
                        chat_template=template)
        result.hf = h
        prov["files"] = {f: sha256_file(out / f) for f in h.files}
        result.files = [out / f for f in h.files]
    write_json(out / PROVENANCE_FILE, prov)
    result.files.append(out / PROVENANCE_FILE)
    return result


__all__ = ["PROVENANCE_FILE", "FuseOptions", "FuseResult", "fuse"]
