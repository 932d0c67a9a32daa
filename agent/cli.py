"""``retllm chat``, ``mcp`` and ``serve``: the agent's commands, added to the ``retllm`` CLI as a plugin."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    """Add the commands to the ``retllm`` app (entry point ``retllm.cli``)."""

    @app.command("chat")
    def chat(
        thread: Annotated[
            str | None, typer.Option("--thread", help="Resume this conversation (printed by earlier runs).")
        ] = None,
        image: Annotated[Path | None, typer.Option("--image", help="Attach an image to the first message.")] = None,
        message: Annotated[
            list[str] | None,
            typer.Option("--message", "-m", help="Send this message and exit (repeatable; default: read stdin)."),
        ] = None,
    ) -> None:
        """Chat-style search: a chat model searches the collection for you and refines across turns."""
        from retllm.agent.chat_cli import run_chat

        from retllm.cli.main import settings

        run_chat(settings(), thread=thread, image=image, messages=message)

    @app.command("mcp")
    def mcp(
        http: Annotated[
            str | None,
            typer.Option(
                "--http",
                help="Serve streamable HTTP on HOST:PORT instead of stdio (non-loopback: needs RETLLM_API_TOKEN).",
            ),
        ] = None,
        insecure: Annotated[
            bool,
            typer.Option(
                "--insecure",
                help="Allow --http on a non-loopback address without RETLLM_API_TOKEN (no authentication!).",
            ),
        ] = False,
    ) -> None:
        """Serve the search, add, delete and list-collections tools over MCP (stdio by default)."""
        from retllm.tools.mcp_server import serve

        from retllm.cli.main import settings

        serve(settings(), http=http, insecure=insecure)

    @app.command("serve")
    def serve(
        host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
        port: Annotated[int, typer.Option("--port", min=1, max=65535, help="Port to listen on.")] = 8080,
        insecure: Annotated[
            bool,
            typer.Option("--insecure", help="Allow a non-loopback address without RETLLM_API_TOKEN (no auth!)."),
        ] = False,
    ) -> None:
        """Serve the REST + SSE API, the OpenAI-compatible chat endpoint and the web chat page (docs at /docs)."""
        from retllm.agent.service.run import run

        from retllm.cli.main import settings

        run(settings(), host=host, port=port, insecure=insecure)
