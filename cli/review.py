"""`iceburg-mlx review`: blind A/B review of two model versions (create, add-rater, serve, report)."""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Optional
from urllib.parse import quote

import typer

from iceburg_mlx.cli.app import app
from iceburg_mlx.cli.options import NoRepeatNgramOpt, RepetitionPenaltyOpt

review_app = typer.Typer(help="Blind A/B review: people rate two model versions side by side; "
                              "their judgments become statistics and DPO pairs.", no_args_is_help=True)
app.add_typer(review_app, name="review")

SessionArg = typer.Argument(..., help="The review session file (SQLite).")


@review_app.command("create")
def create(
    a: str = typer.Option(..., "--a", help="Side A: an adapter (registry name, name@N, directory) or 'base'."),
    b: str = typer.Option(..., "--b", help="Side B: an adapter (registry name, name@N, directory) or 'base'."),
    bench: str = typer.Option(..., "--bench", help="The bench whose prompts are answered (data/<bench>/eval.jsonl)."),
    n: int = typer.Option(40, "--n", help="First N items of the bench."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="The session file (default: review-<bench>-<time>.db)."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Base model (default: smollm2-135m-instruct)."),
    data_dir: Path = typer.Option(Path("data"), "--data-dir", help="Holds <bench>/eval.jsonl."),
    adapters_dir: Optional[Path] = typer.Option(None, "--adapters-dir", help="Registry directory (default: $ICEBURG_MLX_ADAPTERS or ./adapters)."),
    seed: int = typer.Option(0, "--seed", help="Decoding seed (item i uses seed + i) and the seed of the side order."),
    max_tokens: int = typer.Option(256, "--max-tokens", help="Most new tokens per answer."),
    temp: float = typer.Option(0.0, "--temp", help="Sampling temperature for both sides (0 = greedy)."),
    top_p: float = typer.Option(1.0, "--top-p", help="Nucleus sampling mass for both sides."),
    repetition_penalty: float = RepetitionPenaltyOpt,
    no_repeat_ngram: int = NoRepeatNgramOpt,
) -> None:
    """Answer the bench's prompts once with A and with B (same decoding) and write a review session."""
    from rich.console import Console

    from iceburg_mlx.review.create import create_session
    from iceburg_mlx.sampling import SamplingParams

    params = SamplingParams(temperature=temp, top_p=top_p, max_tokens=max_tokens, seed=seed,
                            repetition_penalty=repetition_penalty, no_repeat_ngram=no_repeat_ngram).validate()
    out = out or Path(f"review-{bench}-{_dt.datetime.now():%Y%m%d-%H%M%S}.db")
    with Console(stderr=True).status("preparing...", spinner="dots") as status:
        made = create_session(out, a, b, bench, n=n, model=model, data_dir=data_dir, adapters_dir=adapters_dir,
                              params=params, seed=seed, progress=status.update)
    sides = made.store.meta["sides"]
    typer.echo(f"wrote {out}: {len(made.store)} items of {bench}; A = {sides['A']['spec']} ({made.seconds['A']:.1f} s), "
               f"B = {sides['B']['spec']} ({made.seconds['B']:.1f} s)", err=True)
    if made.identical:
        typer.echo(f"note: {made.identical} items got the same answer from both sides", err=True)
    typer.echo(f"next: iceburg-mlx review serve {out}", err=True)
    typer.echo(str(out))


@review_app.command("add-rater")
def add_rater(
    session: Path = SessionArg,
    name: str = typer.Argument(..., help="The rater's name (letters, digits, spaces, . _ -)."),
    url: str = typer.Option("http://127.0.0.1:8090", "--url", help="Where the page will be served, for the link."),
) -> None:
    """Give a rater a token; from then on every rater of the session needs one. Prints their link."""
    from iceburg_mlx.review.store import ReviewStore

    token = ReviewStore(session).invite(name)
    typer.echo(f"token for {name}: {token} (shown once; only its hash is stored)", err=True)
    typer.echo(f"{url.rstrip('/')}/#rater={quote(name)}&token={token}")


@review_app.command("serve")
def serve(
    session: Path = SessionArg,
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (loopback by default)."),
    port: int = typer.Option(8090, "--port", "-p", help="TCP port."),
) -> None:
    """Serve the rating page (raters see only 'Response 1 / Response 2', never the model names)."""
    from iceburg_mlx.listen import bind, is_loopback
    from iceburg_mlx.review.app import serve_review
    from iceburg_mlx.review.store import ReviewStore

    store = ReviewStore(session)
    sock = bind(host, port)
    tokens = store.has_tokens()
    if not is_loopback(host) and not tokens:
        typer.echo(f"warning: binding {host} with no rater tokens: anyone who can reach it can rate as anyone "
                   f"(iceburg-mlx review add-rater {session} NAME)", err=True)
    typer.echo(f"review page: http://{host}:{port}/ ({len(store)} items of {store.meta['bench']}; "
               + ("raters need their token)" if tokens else "raters type their name)"), err=True)
    serve_review(store, sock)


@review_app.command("report")
def report(
    session: Path = SessionArg,
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Directory for report.md, review.png and "
                                       "review.json (default: <session>-report/ beside the session)."),
    to_pairs: Optional[Path] = typer.Option(None, "--to-pairs", help="Also write the judged items as DPO pairs "
                                            "(JSONL: messages, chosen, rejected, provenance; ties dropped)."),
) -> None:
    """Win rate, sign test, rubric means, inter-rater agreement and position bias, as a markdown report."""
    from iceburg_mlx.review.report import verdict, write_pairs, write_report
    from iceburg_mlx.review.store import ReviewStore

    store = ReviewStore(session)
    out = out or session.with_name(session.stem + "-report")
    record, paths = write_report(store, out)
    typer.echo(verdict(record))
    ag = record["agreement"]
    if "kappa" in ag and ag["kappa"]["value"] is not None:
        typer.echo(f"Cohen's kappa {ag['kappa']['value']:.3f} over {ag['kappa']['n']} items rated by both raters")
    elif ag.get("alpha_preference", {}).get("value") is not None:
        typer.echo(f"Krippendorff's alpha {ag['alpha_preference']['value']:.3f} over {ag['raters']} raters")
    pos = record["position"]
    if pos["first_share"] is not None:
        typer.echo(f"position bias: the first response won {100 * pos['first_share']:.0f}% of decided judgments "
                   f"(sign test p={pos['sign_p']:.3f})")
    typer.echo("wrote " + ", ".join(str(p) for p in paths.values()), err=True)
    if to_pairs is not None:
        typer.echo(f"wrote {write_pairs(store, to_pairs)} DPO pairs to {to_pairs}", err=True)
