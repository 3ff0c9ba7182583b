"""``mose status``: what a workspace's index holds."""

from __future__ import annotations

from typing import Annotated

import typer

from .options import IndexDirOpt, JsonOpt, ModelOpt, WorkspaceOpt
from .output import emit_json
from .search import open_service
from .workspace import RULE, resolve


def status_command(
    workspace: WorkspaceOpt = None,
    model: ModelOpt = None,
    index_dir: IndexDirOpt = None,
    skipped: Annotated[bool, typer.Option("--skipped", help="List every skipped file and why.")] = False,
    pending: Annotated[bool, typer.Option(
        "--pending/--no-pending", help="Count the files changed since the last index (a walk "
                                       "and a stat per file).")] = True,
    as_json: JsonOpt = False,
) -> None:
    """Show the index of a workspace: files, chunks, deep coverage, model, skipped files."""
    ws = resolve(workspace, index_dir)
    ws.require_index()
    service, folder = open_service(ws, model, 0)
    try:
        (st,) = service.status([folder], count_pending=pending)
        model_path = str(folder.index.model.model_dir.path)
        skips = [(s.path, s.skip_code, s.skip_message)
                 for s in folder.index.store.all_files() if s.skipped]
    finally:
        service.close()
    name, _, version = st.model.partition(" ")
    data = {
        "command": "status", "workspace": str(ws.root), "index_dir": str(st.index_dir),
        "model": {"name": name, "version": version, "path": model_path,
                  "index_exit": st.index_exit, "rerank_exit": st.rerank_exit},
        "files": st.files, "indexed_files": st.indexed_files, "chunks": st.chunks,
        "pending_files": st.pending_files, "deep_coverage": st.deep_coverage,
        "skipped": st.skipped, "skipped_count": sum(st.skipped.values()),
        "bytes_on_disk": st.bytes_on_disk, "update_running": st.update_running,
        "writer": st.writer,
        "skipped_files": [{"path": p, "code": c, "message": m} for p, c, m in skips],
    }
    if as_json:
        emit_json(data)
        return
    typer.echo(f"workspace    {data['workspace']}")
    typer.echo(f"index        {data['index_dir']} ({st.bytes_on_disk / 1e6:.1f} MB)")
    typer.echo(f"model        {st.model} (index exit {st.index_exit}, rerank exit "
               f"{st.rerank_exit})")
    changed = "" if st.pending_files is None else f", {st.pending_files:,} changed since indexed"
    typer.echo(f"files        {st.indexed_files:,} indexed, {data['skipped_count']:,} skipped"
               f"{changed}")
    typer.echo(f"chunks       {st.chunks:,} ({(st.deep_coverage or 0):.0%} with deep vectors)")
    if st.update_running:
        typer.echo(f"updating     {st.writer or 'another process'} is writing the index")
    if st.skipped:
        typer.echo("skipped      " + ", ".join(f"{c}: {n}" for c, n in sorted(st.skipped.items())))
    shown = skips if skipped else skips[:10]
    for p, c, m in shown:
        typer.echo(f"  {p}: {c} ({m})")
    if len(skips) > len(shown):
        typer.echo(f"  ... {len(skips) - len(shown)} more (--skipped lists all)")


def register(app: typer.Typer) -> None:
    app.command("status", epilog=RULE)(status_command)
