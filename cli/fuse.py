"""`iceburg-mlx fuse`: merge an adapter into its base; write a Hugging Face directory or a GGUF + Modelfile."""

from __future__ import annotations

from typing import Optional

import typer
from iceburg_mlx.cli.app import app


@app.command()
def fuse(
    adapter: Optional[str] = typer.Option(None, "--adapter", "-a", help="Adapter directory or registry name (name@version); none: export the base alone."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Base model: name, path, Hub repo id or Ollama tag (default: smollm2-135m-instruct)."),
    out: str = typer.Option("fused", "--out", "-o", help="Output directory."),
    to_gguf: bool = typer.Option(False, "--to-gguf", help="Write a GGUF file and an Ollama Modelfile instead of a Hugging Face directory."),
    quant: Optional[str] = typer.Option(None, "--quant", "-q", help="GGUF type with --to-gguf: f16 (default), bf16, q8_0, q4_0, q4_1, q4_k_m, q6_k (f32 too)."),
    dequantize: bool = typer.Option(False, "--dequantize", help="Write a quantized base as dense weights (HF output)."),
    name: Optional[str] = typer.Option(None, "--name", help="Output and Ollama model name (default: iceburg-<role> for a role adapter, else the model's)."),
    system: Optional[str] = typer.Option(None, "--system", "-s", help="Modelfile SYSTEM (default: the system prompt the adapter was trained with; '' for none)."),
    temperature: Optional[float] = typer.Option(None, "--temperature", help="Modelfile sampling default."),
    top_p: Optional[float] = typer.Option(None, "--top-p", help="Modelfile sampling default."),
    imatrix: bool = typer.Option(True, "--imatrix/--no-imatrix", help="Quantize GGUF with an importance matrix from calibration text (--no-imatrix: llama.cpp's reference quantizers)."),
    calibration: Optional[str] = typer.Option(None, "--calibration", help="Calibration text for --imatrix: .jsonl (chat or text records), .txt, or a directory of */train.jsonl (default: the shipped data/)."),
    calibration_tokens: int = typer.Option(2048, "--calibration-tokens", help="Calibration tokens for --imatrix."),
    force: bool = typer.Option(False, "--force", help="Fuse an adapter trained on another base (a warning instead of an error)."),
) -> None:
    """Fuse an adapter into its base model and export it (HF safetensors, or GGUF for llama.cpp/Ollama)."""
    from iceburg_mlx.cli import ui
    from iceburg_mlx.export import FuseOptions
    from iceburg_mlx.export import fuse as run_fuse
    from iceburg_mlx.export.mix import preset

    from iceburg_mlx.errors import ConfigError

    if quant is not None and not to_gguf:
        raise ConfigError(f"--quant {quant} applies to GGUF output: add --to-gguf (a Hugging Face directory "
                          "keeps the base's own weights; --dequantize writes them dense)")
    quant = quant or "f16"
    if to_gguf:
        preset(quant)  # an unknown type fails before the model is loaded
    opts = FuseOptions(out=out, model=model, adapter=adapter, to_gguf=to_gguf, quant=quant,
                       dequantize=dequantize, name=name, system=system, temperature=temperature, top_p=top_p,
                       imatrix=imatrix, calibration=calibration, calibration_tokens=calibration_tokens,
                       force=force)
    err = ui.console(stderr=True)
    with ui.progress(err, "tensors", transient=True) as bar:
        task = bar.add_task("loading and fusing", total=None)

        def progress(tensor: str, done: int, total: int) -> None:
            bar.update(task, description="writing tensors", completed=done, total=total, stats=tensor)

        result = run_fuse(opts, progress=progress)
    if result.n_fused:
        err.print(f"fused {result.n_fused} adapter layers from {adapter}")
    for note in result.notes:
        err.print(f"note: {note}")
    for f in result.files:
        typer.echo(str(f))
    if result.gguf is not None:
        g = result.gguf
        kinds: dict[str, int] = {}
        for t in g.types.values():
            kinds[t] = kinds.get(t, 0) + 1
        mix = ", ".join(f"{k} x{v}" for k, v in sorted(kinds.items()))
        err.print(f"{g.preset}: {g.n_bytes / 2**20:.1f} MiB in {g.seconds:.1f} s ({mix}"
                  + (f"; {len(g.lossless)} tensors kept without requantizing" if g.lossless else "") + ")")
        imx = result.provenance.get("imatrix")
        if imx:
            err.print(f"importance matrix: {imx['tokens']} calibration tokens from {imx['source']} "
                      f"({imx['entries']} tensors)")
        mf = result.modelfile
        if mf is not None and mf.family is None:
            err.print("note: chat template not recognised (ChatML, Llama 3, Mistral); the Modelfile has no TEMPLATE")
        elif mf is not None and not mf.verified:
            err.print(f"warning: the Modelfile TEMPLATE differs from the chat template on: {'; '.join(mf.mismatches)}")
        typer.echo(f"to use it with Ollama: {result.ollama_command}")
