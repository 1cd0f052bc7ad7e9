"""The ``limner`` command line: serve, the sandbox, generate and edit, images, users, tokens, database.

Without a server the commands work directly on the local data dir as the local user
(``LIMNER_LOCAL_USER``), or as ``--user NAME``, opening the same Runtime as the server, emulators included
when no provider is configured. Errors print their message and hint (the CLI's own hint for some codes,
see :mod:`limner.cli_output`) and exit with the code of their class (see :data:`EXIT_CODES`); nothing
prints a traceback unless ``--debug`` is given. Results go to stdout unwrapped; progress goes to stderr.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import re
import signal
import socket
from collections.abc import Awaitable, Callable, Coroutine
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from limner import __version__
from limner.accounts import check_credentials
from limner.cli_output import ProgressReporter, cli_hint, images_document, tsv_line
from limner.config import Settings, load_settings
from limner.db.models import ApiToken, User, utcnow
from limner.db.repositories import UserRepository, normalize_name
from limner.errors import (
    AddressInUseError,
    ConfigurationError,
    ImageNotFoundError,
    InputError,
    LimnerError,
    ProviderError,
    StorageError,
    TokenNotFoundError,
)
from limner.ids import new_api_token
from limner.imaging import extension_for
from limner.library import ImageRecord, Provenance
from limner.runtime import Runtime
from limner.tools.base import run_tool

__all__ = ["EXIT_CODES", "app", "main"]

T = TypeVar("T")

# sysexits.h codes: scripts can tell a bad request from a provider outage or a broken setup.
EXIT_CODES: tuple[tuple[type[LimnerError], int], ...] = (
    (ImageNotFoundError, 66),
    (InputError, 65),
    (AddressInUseError, 75),
    (ConfigurationError, 78),
    (ProviderError, 69),
    (StorageError, 74),
    (LimnerError, 70),
)

# soft_wrap: a line is never broken at the console's width (80 in a pipe), so scripts read whole IDs and paths.
console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)

app = typer.Typer(
    name="limner",
    help="Image generation and editing as tools for AI agents.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,  # plain help: typer's rich panels print Python types (`--json <bool>`)
)
images_app = typer.Typer(help="List, show, export and delete images.", no_args_is_help=True, rich_markup_mode=None)
users_app = typer.Typer(help="Manage users.", no_args_is_help=True, rich_markup_mode=None)
tokens_app = typer.Typer(help="Manage API tokens.", no_args_is_help=True, rich_markup_mode=None)
db_app = typer.Typer(help="Database maintenance.", no_args_is_help=True, rich_markup_mode=None)
app.add_typer(images_app, name="images")
app.add_typer(users_app, name="users")
app.add_typer(tokens_app, name="tokens")
app.add_typer(db_app, name="db")

_state: dict[str, Any] = {"debug": False}


def exit_code_for(exc: LimnerError) -> int:
    """The exit code of an error class."""
    return next(code for cls, code in EXIT_CODES if isinstance(exc, cls))


def _settings() -> Settings:
    return load_settings()


def _fail(exc: LimnerError, *, user: str = "local") -> typer.Exit:
    """Print the message and the CLI's hint (``user``: whom the command acted as), give the exit code."""
    err_console.print(Text.assemble(("Error: ", "bold red"), exc.message))
    if hint := cli_hint(exc, user=user):
        err_console.print(Text.assemble(("What to do: ", "yellow"), hint))
    return typer.Exit(exit_code_for(exc))


def _run(coro: Coroutine[Any, Any, T], *, user: str = "local") -> T:
    """Run a coroutine; LimnerErrors become a message, a hint and their exit code."""
    try:
        return asyncio.run(coro)
    except LimnerError as exc:
        if _state["debug"]:
            raise
        raise _fail(exc, user=user) from None


def _out(line: str) -> None:
    """One result line on stdout, as is: no markup, no wrapping, tabs kept (rich would expand them)."""
    typer.echo(line)


def _with_runtime(work: Callable[[Runtime], Awaitable[T]], *, with_tools: bool = False, user: str | None = None) -> T:
    """Open the local runtime (settings read before the event loop starts) and run ``work`` in it;
    ``user`` is the ``--user`` the command was given, named in the hints of its errors.
    """
    try:
        settings = _settings()
    except LimnerError as exc:
        raise _fail(exc) from None

    async def main() -> T:
        async with Runtime.open(settings, with_tools=with_tools) as runtime:
            if runtime.sandbox is not None and runtime.sandbox.reason is not None:
                err_console.print(f"[dim]sandbox: {runtime.sandbox.reason}; using the built-in emulators[/]")
            return await work(runtime)

    return _run(main(), user=user or settings.local_user)


async def _local_user_id(runtime: Runtime) -> str:
    async with runtime.db.unit_of_work() as session:
        user = await UserRepository(session).get_or_create(runtime.settings.local_user)
    return user.id


async def _user_id(runtime: Runtime, name: str | None) -> str:
    """The user a command acts as: ``--user NAME``, who must exist (a typo must not make a new account
    that then owns the images), else the local user, made on first use.
    """
    if name is None or name == runtime.settings.local_user:
        return await _local_user_id(runtime)
    async with runtime.db.unit_of_work(write=False) as session:
        user = await UserRepository(session).by_name(name)
    if user is None:
        raise InputError(
            f"There is no user named {name!r}.",
            hint=(
                "Use the name of a web UI account or of a `limner tokens create --user` user, or leave out "
                f"--user to act as the local user {runtime.settings.local_user!r} (LIMNER_LOCAL_USER)."
            ),
        )
    return user.id


UserOption = Annotated[
    str | None,
    typer.Option(
        "--user",
        metavar="NAME",
        help="Act as this existing user (a web UI account, an API token's user); default: LIMNER_LOCAL_USER.",
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print the images as one JSON document (see the README).")]


def _print_version(value: bool) -> None:
    if value:
        try:
            from importlib.metadata import PackageNotFoundError, version

            shown = version("limner")
        except PackageNotFoundError:  # run from a source tree that was never installed
            shown = __version__
        typer.echo(f"limner {shown}")
        raise typer.Exit()


@app.callback()
def _main(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
    version: Annotated[
        bool,
        typer.Option("--version", "-V", callback=_print_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    """limner: image generation and editing as tools for AI agents."""
    _state["debug"] = debug
    # One-shot commands say what matters themselves; library warnings would only repeat it.
    logging.basicConfig(level=logging.DEBUG if debug else logging.ERROR, format="%(levelname)s %(name)s: %(message)s")


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(metavar="ADDRESS", help="Address to listen on (LIMNER_HOST).")] = None,
    port: Annotated[int | None, typer.Option(metavar="PORT", help="Port to listen on (LIMNER_PORT).")] = None,
) -> None:
    """Run the HTTP API (and, with no provider configured, the built-in emulators)."""
    import uvicorn

    from limner.api import create_app

    try:
        settings = _settings()
    except ConfigurationError as exc:
        err_console.print(f"[bold red]Error:[/] {exc.message}\n[yellow]What to do:[/] {exc.hint}")
        raise typer.Exit(exit_code_for(exc)) from None
    bind_host = host or settings.host
    try:  # before uvicorn, so a taken port is told before migrations and emulators start, and in our words
        sockets = _listen(bind_host, settings.port if port is None else port)
    except LimnerError as exc:
        raise _fail(exc) from None
    bind_port = sockets[0].getsockname()[1]  # the real one, also for --port 0
    logging.basicConfig(level=settings.log_level, format="%(levelname)s %(name)s: %(message)s", force=True)
    logging.getLogger("httpx2").setLevel(max(logging.WARNING, logging.getLevelName(settings.log_level)))
    url = f"http://{bind_host}:{bind_port}"
    console.print(f"limner {__version__} on [bold]{url}[/] (data: {settings.data_dir})", soft_wrap=True)
    console.print(f"Open {url} in a browser and sign up (the first account is the administrator).", soft_wrap=True)
    console.print("API docs at /docs; API tokens: limner tokens create --user YOUR_NAME", soft_wrap=True)
    config = uvicorn.Config(create_app(settings), host=bind_host, port=bind_port, log_level=settings.log_level.lower())
    try:
        uvicorn.Server(config).run(sockets=sockets)
    finally:
        for sock in sockets:
            sock.close()


def _listen(host: str, port: int) -> list[socket.socket]:
    """Bound sockets for every address of ``host`` (as asyncio's ``create_server`` would make them), or a
    LimnerError naming the option and the setting to change.
    """
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigurationError(
            f"Cannot listen on {host!r}: {exc.strerror}.", hint="Give an address or host name: --host or LIMNER_HOST."
        ) from exc
    sockets: list[socket.socket] = []
    chosen = port
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((address[0], chosen, *address[2:]))
            chosen = chosen or sock.getsockname()[1]  # port 0: every address gets the port the first one got
    except OSError as exc:
        for sock in sockets:
            sock.close()
        raise _bind_error(host, port, exc) from exc
    return sockets


def _bind_error(host: str, port: int, exc: OSError) -> LimnerError:
    where = f"{host}:{port}"
    if exc.errno == errno.EADDRINUSE:
        return AddressInUseError(
            f"Port {port} on {host} is already in use (another limner serve, or another program).",
            hint=f"Stop what listens on {where}, or choose another port: --port N or LIMNER_PORT=N.",
        )
    return ConfigurationError(
        f"Cannot listen on {where}: {exc.strerror or exc}.",
        hint="Choose an address of this machine and a port you may open: --host/--port or LIMNER_HOST/LIMNER_PORT.",
    )


@app.command()
def sandbox(
    port: Annotated[int, typer.Option(metavar="PORT", help="Port of the emulators (0: any free port).")] = 8481,
    host: Annotated[str, typer.Option(metavar="ADDRESS", help="Address to listen on.")] = "127.0.0.1",
) -> None:
    """Serve the upstream emulators on their own, for any client, offline."""
    from limner.runtime import default_sandbox
    from limner.sandbox.server import serve_sandbox

    async def until_stopped() -> None:
        async with serve_sandbox(default_sandbox(), host=host, port=port) as running:
            console.print(f"limner sandbox at [bold]{running.base_url}[/] (any non-empty API key works)")
            for name, url in running.urls.items():
                console.print(f"  {name:<14} {url}")
            console.print("Press Ctrl+C to stop.")
            await _stop_signal()

    with contextlib.suppress(KeyboardInterrupt):  # a Ctrl+C before the handlers are in place
        asyncio.run(until_stopped())
    console.print("stopped")


async def _stop_signal() -> None:
    """Wait for SIGTERM (a service manager, ``kill``) or SIGINT (Ctrl+C) and stop cleanly on either.

    SIGINT is left alone when the process was started with it ignored (``nohup``, a background job), as
    a shell expects; SIGTERM always stops it.
    """
    stop, loop = asyncio.Event(), asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        if signal.getsignal(sig) is not signal.SIG_IGN:
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()


def _write_outputs(records: list[ImageRecord], blobs: list[bytes], out: Path | None) -> list[Path]:
    if out is None:
        return []
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for record, data in zip(records, blobs, strict=True):
        path = out / f"{record.id}.{extension_for(record.media_type)}"
        path.write_bytes(data)
        paths.append(path)
    return paths


async def _run_tool_locally(
    runtime: Runtime, tool: str, arguments: dict[str, Any], out: Path | None, user_id: str
) -> tuple[list[ImageRecord], list[Path]]:
    """Run a tool as ``user_id`` with its progress on stderr; the images made and the files written."""
    spec = runtime.tool(tool)
    async with ProgressReporter(err_console, tool) as reporter:
        result = await run_tool(spec, arguments, runtime.tool_context(user_id, progress=reporter))
    blobs = [data for _, data in await runtime.library.read_many(user_id, [r.id for r in result.images])]
    return result.images, await asyncio.to_thread(_write_outputs, result.images, blobs, out)


def _show_made(made: tuple[list[ImageRecord], list[Path]], as_json: bool) -> None:
    """``generate``/``edit`` results: the JSON document, or one line per image (ID first)."""
    records, paths = made
    if as_json:
        _out(images_document(records, paths))
        return
    for index, record in enumerate(records):
        where = f"  {paths[index]}" if paths else ""
        _out(f"{record.id}  {record.width}x{record.height}  {record.media_type}{where}")


@app.command()
def generate(
    prompt: Annotated[str, typer.Argument(metavar="PROMPT", help="What to draw.")],
    size: Annotated[str | None, typer.Option(metavar="WxH", help="e.g. 1024x1024, 1536x1024, auto.")] = None,
    quality: Annotated[str | None, typer.Option(metavar="LEVEL", help="auto, low, medium, high.")] = None,
    background: Annotated[str | None, typer.Option(metavar="KIND", help="auto, transparent, opaque.")] = None,
    n: Annotated[int | None, typer.Option("-n", metavar="N", min=1, max=10, help="How many images.")] = None,
    negative: Annotated[
        str | None, typer.Option(metavar="TEXT", help="What must not appear (stable-diffusion).")
    ] = None,
    out: Annotated[Path | None, typer.Option(metavar="DIR", help="Folder to write the images to.")] = None,
    tool: Annotated[
        str, typer.Option(metavar="TOOL", help="Generation tool: image_gen_oai, dalle, stable-diffusion or flux.")
    ] = "image_gen_oai",
    user: UserOption = None,
    as_json: JsonOption = False,
) -> None:
    """Generate images from a prompt and store them in the library (and in --out)."""
    options = {"size": size, "quality": quality, "background": background, "n": n, "negative_prompt": negative}

    async def work(runtime: Runtime) -> tuple[list[ImageRecord], list[Path]]:
        arguments = _tool_arguments(runtime, tool, {"prompt": prompt}, options, action="generate")
        return await _run_tool_locally(runtime, tool, arguments, out, await _user_id(runtime, user))

    _show_made(_with_runtime(work, with_tools=True, user=user), as_json)


def _tool_arguments(
    runtime: Runtime, tool: str, required: dict[str, Any], options: dict[str, Any], *, action: str
) -> dict[str, Any]:
    """CLI options as the tool's own arguments: only those it takes (else a clear error), ``--size`` as
    width/height for tools that take those, and the action for one-tool families (flux).
    """
    properties = runtime.tool(tool).json_schema().get("properties", {})
    arguments = dict(required)
    if "action" in properties:
        arguments["action"] = action
    for name, value in options.items():
        if value is None:
            continue
        if name == "size" and "size" not in properties and {"width", "height"} <= set(properties):
            width, _, height = value.partition("x")
            arguments.update(width=int(width), height=int(height))
        elif name in properties:
            arguments[name] = value
        else:
            raise InputError(f"The tool {tool} does not take --{name.replace('_', '-')}.")
    return arguments


@app.command()
def edit(
    image_ids: Annotated[
        list[str], typer.Argument(metavar="IMAGE_ID", help="IDs of the images to edit (the first is the main one).")
    ],
    prompt: Annotated[str, typer.Option("--prompt", "-p", metavar="PROMPT", help="What to change.")],
    mask: Annotated[
        Path | None, typer.Option(metavar="FILE", help="PNG whose transparent pixels mark the area to change.")
    ] = None,
    size: Annotated[str | None, typer.Option(metavar="WxH", help="Output size.")] = None,
    quality: Annotated[str | None, typer.Option(metavar="LEVEL", help="auto, low, medium, high.")] = None,
    n: Annotated[int | None, typer.Option("-n", metavar="N", min=1, max=10, help="How many variants.")] = None,
    out: Annotated[Path | None, typer.Option(metavar="DIR", help="Folder to write the images to.")] = None,
    tool: Annotated[
        str, typer.Option(metavar="TOOL", help="Editing tool: image_edit_oai, stable-diffusion-edit or flux.")
    ] = "image_edit_oai",
    user: UserOption = None,
    as_json: JsonOption = False,
) -> None:
    """Edit images by ID; the new images name them as parents."""

    async def work(runtime: Runtime) -> tuple[list[ImageRecord], list[Path]]:
        options = {"size": size, "quality": quality, "n": n}
        args = _tool_arguments(runtime, tool, {"image_ids": image_ids, "prompt": prompt}, options, action="edit")
        user_id = await _user_id(runtime, user)
        if mask is not None:
            if "mask_image_id" not in runtime.tool(tool).json_schema().get("properties", {}):
                raise InputError(f"The tool {tool} does not take --mask.")
            data = await asyncio.to_thread(mask.read_bytes)
            from limner.backends.base import ImageOutput

            (record,) = await runtime.library.save(
                user_id, [ImageOutput(data=data)], Provenance(source="uploaded", original_name=mask.name)
            )
            args["mask_image_id"] = record.id
        return await _run_tool_locally(runtime, tool, args, out, user_id)

    _show_made(_with_runtime(work, with_tools=True, user=user), as_json)


@app.command()
def chat(
    out: Annotated[Path, typer.Option(metavar="DIR", help="Folder the images are saved to.")] = Path("limner-images"),
    conversation: Annotated[str | None, typer.Option(metavar="ID", help="Continue this conversation (ID).")] = None,
    agent: Annotated[str | None, typer.Option(metavar="ID", help="Agent ID for a new conversation.")] = None,
    user: UserOption = None,
) -> None:
    """Talk to the agent in the terminal: /attach ID... attaches images to the next message, /quit leaves."""
    _with_runtime(lambda runtime: _chat_loop(runtime, out, conversation, agent, user), with_tools=True, user=user)


async def _say(*args: Any, **kwargs: Any) -> None:
    await asyncio.to_thread(console.print, *args, **kwargs)


def _read_line(prompt: str) -> str | None:
    try:
        return input(prompt)
    except EOFError:
        return None


async def _chat_loop(
    runtime: Runtime, out: Path, conversation_id: str | None, agent: str | None, user: str | None
) -> None:
    user_id = await _user_id(runtime, user)
    user_name = user or runtime.settings.local_user
    if conversation_id is None:
        conversation = await runtime.chat.create(user_id, agent_id=agent)
    else:
        conversation = (await runtime.chat.get(user_id, conversation_id))[0]
    model = runtime.chat_runner().choice
    await _say(f"conversation {conversation.id} with {model.name}" + (" (sandbox)" if model.is_sandbox else ""))
    await _say("Type a message; /attach ID... to attach images to the next one; /quit to leave.")
    attachments: list[str] = []
    while (line := await asyncio.to_thread(_read_line, "you> ")) is not None:
        text = line.strip()
        if text in ("/quit", "/exit"):
            break
        if text.startswith("/attach"):
            attachments += text.split()[1:]
            continue
        if text:
            await _chat_turn(runtime, (user_id, user_name), conversation.id, text, attachments, out)
            attachments = []


async def _chat_turn(
    runtime: Runtime, user: tuple[str, str], conversation_id: str, text: str, images: list[str], out: Path
) -> None:
    user_id, user_name = user

    async def emit(event: str, data: dict[str, Any]) -> None:
        if event == "text_delta":
            await asyncio.to_thread(console.print, data["text"], end="", markup=False, highlight=False)
        elif event == "tool_call_started":
            await _say(f"[dim]… {data['tool']} {json.dumps(data['arguments'])}[/]", soft_wrap=True)
        elif event == "image_ready":
            record = await runtime.library.get(user_id, data["image"]["id"])
            blob = [d for _, d in await runtime.library.read_many(user_id, [record.id])]
            (path,) = await asyncio.to_thread(_write_outputs, [record], blob, out)
            await _say(f"[green]image {record.id}[/] {record.width}x{record.height} → {path}", soft_wrap=True)
        elif event == "tool_failed":
            await _say(f"[red]{data['tool']} failed:[/] {data['message']} {data.get('hint') or ''}", soft_wrap=True)

    try:
        await runtime.chat.send(user_id, conversation_id, text=text, image_ids=images, emit=emit)
    except LimnerError as exc:
        await _say(Text.assemble(("Error: ", "bold red"), exc.message, " ", cli_hint(exc, user=user_name) or ""))
    await _say("")


@app.command("mcp")
def mcp_command(
    user: Annotated[
        str | None,
        typer.Option(metavar="NAME", help="Act as this existing user (default: the local user, LIMNER_LOCAL_USER)."),
    ] = None,
) -> None:
    """Serve limner's tools to an MCP client over stdin/stdout (Claude Desktop, IDEs, agents)."""
    from limner.mcp_server import serve_stdio, stdio_user_id

    async def work(runtime: Runtime) -> None:
        await serve_stdio(runtime, await stdio_user_id(runtime, user))

    _with_runtime(work, with_tools=True)


# --- images -------------------------------------------------------------------------------------


@images_app.command("list")
def images_list(
    limit: Annotated[int, typer.Option(metavar="N", min=1, max=500, help="How many.")] = 20,
    source: Annotated[str | None, typer.Option(metavar="SOURCE", help="generated, edited, uploaded or mcp.")] = None,
    user: UserOption = None,
    as_json: JsonOption = False,
) -> None:
    """The user's images, newest first: a table on a terminal, tab-separated lines in a pipe."""

    async def work(runtime: Runtime) -> list[ImageRecord]:
        return await runtime.library.recent(await _user_id(runtime, user), limit=limit, source=source)

    records = _with_runtime(work, user=user)
    if as_json:
        _out(images_document(records))
        return
    if not console.is_terminal:  # a table's padding and cropping are for eyes; scripts get whole fields
        for record in records:
            _out(tsv_line(record))
        return
    table = Table(box=None)
    table.add_column("ID", no_wrap=True)
    for column in ("created", "source", "size", "prompt"):
        table.add_column(column)
    for r in records:
        table.add_row(
            r.id,
            r.created_at.strftime("%Y-%m-%d %H:%M"),
            r.source,
            f"{r.width}x{r.height}",
            (r.prompt or r.original_name or "")[:60],
        )
    console.print(table)


@images_app.command("show")
def images_show(
    image_id: Annotated[str, typer.Argument(metavar="IMAGE_ID", help="Image ID.")], user: UserOption = None
) -> None:
    """An image's record and parents, as JSON."""

    async def work(runtime: Runtime) -> dict[str, Any]:
        user_id = await _user_id(runtime, user)
        record = await runtime.library.get(user_id, image_id)
        parents = await runtime.library.parents(user_id, image_id)
        data = record.model_dump(mode="json", exclude={"owner_id"})
        data["parents"] = [{"id": p.id, "role": p.role, "exists": p.image is not None} for p in parents]
        return data

    console.print_json(json.dumps(_with_runtime(work, user=user)))


@images_app.command("export")
def images_export(
    image_ids: Annotated[list[str], typer.Argument(metavar="IMAGE_ID", help="Image IDs.")],
    out: Annotated[Path, typer.Option(metavar="DIR", help="Folder to write to.")] = Path(),
    user: UserOption = None,
) -> None:
    """Write images to files named after their IDs."""

    async def work(runtime: Runtime) -> list[Path]:
        found = await runtime.library.read_many(await _user_id(runtime, user), image_ids)
        return await asyncio.to_thread(_write_outputs, [r for r, _ in found], [d for _, d in found], out)

    for path in _with_runtime(work, user=user):
        _out(str(path))


@images_app.command("delete")
def images_delete(
    image_ids: Annotated[list[str], typer.Argument(metavar="IMAGE_ID", help="Image IDs.")], user: UserOption = None
) -> None:
    """Delete images."""

    async def work(runtime: Runtime) -> None:
        user_id = await _user_id(runtime, user)
        for image_id in image_ids:
            await runtime.library.delete(user_id, image_id)
            await asyncio.to_thread(_out, f"deleted {image_id}")

    _with_runtime(work, user=user)


# --- users, tokens, db --------------------------------------------------------------------------


@users_app.command("create")
def users_create(
    name: Annotated[str, typer.Argument(metavar="NAME", help="Unique user name (case-insensitive).")],
    admin: Annotated[bool, typer.Option(help="Make the user an administrator.")] = False,
    password: Annotated[
        bool, typer.Option("--password", help="Ask for a password, so the user can sign in to the web UI.")
    ] = False,
) -> None:
    """Create a user; with --password they can sign in (the first such account becomes the administrator)."""
    secret = typer.prompt("Password", hide_input=True, confirmation_prompt=True) if password else None

    async def work(runtime: Runtime) -> User:
        if secret is not None:
            check_credentials(name, secret)
        hashed = await runtime.accounts.hash_password(secret) if secret is not None else None
        async with runtime.db.unit_of_work(write=True) as session:
            repo = UserRepository(session)
            if await repo.by_name(name) is not None:
                raise InputError(f"A user named {normalize_name(name)!r} already exists.", hint=_USERS_HINT)
            first = hashed is not None and not await repo.has_sign_in_account()
            return await repo.create(name, is_admin=admin or first, password_hash=hashed)

    user = _with_runtime(work, with_tools=False)
    role = " (administrator)" if user.is_admin else ""
    console.print(f"created user {user.name}{role} ({user.id})", soft_wrap=True)


_USERS_HINT = "`limner users list` shows every user."


@users_app.command("list")
def users_list() -> None:
    """Every user: name, ID, whether they are an administrator and whether they can sign in."""

    async def work(runtime: Runtime) -> list[User]:
        async with runtime.db.unit_of_work() as session:
            return await UserRepository(session).all()

    table = Table("name", "id", "admin", "can sign in")
    for user in _with_runtime(work, with_tools=False):
        table.add_row(user.name, user.id, "yes" if user.is_admin else "", "yes" if user.password_hash else "")
    console.print(table)


@users_app.command("admin")
def users_admin(
    name: Annotated[str, typer.Argument(metavar="NAME", help="The user's name.")],
    revoke: Annotated[bool, typer.Option("--revoke", help="Take the administrator role away instead.")] = False,
) -> None:
    """Make a user an administrator (or, with --revoke, no longer one)."""

    async def work(runtime: Runtime) -> User:
        async with runtime.db.unit_of_work(write=True) as session:
            user = await UserRepository(session).by_name(name)
            if user is None:
                raise InputError(f"No user is named {normalize_name(name)!r}.", hint=_USERS_HINT)
            user.is_admin = not revoke
            return user

    user = _with_runtime(work, with_tools=False)
    console.print(f"{user.name} is {'no longer ' if revoke else ''}an administrator", soft_wrap=True)


def _duration(text: str) -> timedelta:
    """``30d``, ``12h``, ``2w`` or a bare number of days."""
    match = re.fullmatch(r"\s*(\d+)\s*([dhw]?)\s*", text.lower())
    if match is None or int(match.group(1)) == 0:
        raise typer.BadParameter(f"{text!r} is not a duration; use e.g. 30d, 12h, 2w or a number of days.")
    unit = {"": "days", "d": "days", "h": "hours", "w": "weeks"}[match.group(2)]
    return timedelta(**{unit: int(match.group(1))})


@tokens_app.command("create")
def tokens_create(
    user: Annotated[str, typer.Option("--user", metavar="NAME", help="User the token acts as (created if missing).")],
    name: Annotated[str, typer.Option(metavar="LABEL", help="A label for the token.")] = "",
    expires_in: Annotated[
        str | None,
        typer.Option(
            "--expires-in", metavar="DURATION", help="Lifetime, e.g. 30d, 12h, 2w or days; default: never expires."
        ),
    ] = None,
) -> None:
    """Create an API token; it is printed once, as the last word of the output."""
    lifetime = _duration(expires_in) if expires_in is not None else None

    async def work(runtime: Runtime) -> tuple[str, str]:
        token = new_api_token()
        expires_at = utcnow() + lifetime if lifetime is not None else None
        async with runtime.db.unit_of_work(write=True) as session:
            repo = UserRepository(session)
            owner = await repo.get_or_create(user)
            await repo.add_token(owner, token, name, expires_at=expires_at)
        return owner.name, token

    owner_name, token = _with_runtime(work, with_tools=False)
    console.print(f"API token for {owner_name} (shown only now): {token}", soft_wrap=True)


def _when(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M") if moment is not None else ""


@tokens_app.command("list")
def tokens_list(
    user: Annotated[
        str | None, typer.Option("--user", metavar="NAME", help="Only this user's tokens; default: everyone's.")
    ] = None,
) -> None:
    """API tokens: ID, user, name, first characters, created, last used, expiry (never the secret)."""

    async def work(runtime: Runtime) -> list[tuple[ApiToken, str]]:
        async with runtime.db.unit_of_work() as session:
            rows = await UserRepository(session).all_tokens_for_operator()
        return [row for row in rows if user is None or row[1] == normalize_name(user)]

    rows = _with_runtime(work, with_tools=False)
    table = Table("id", "user", "name", "prefix", "created", "last used", "expires")
    table.columns[0].no_wrap = True  # IDs are for copying into `limner tokens revoke`: never cut them
    table.columns[0].min_width = max((len(token.id) for token, _ in rows), default=2)
    now = utcnow()
    for token, owner in rows:
        expires = _when(token.expires_at)
        if token.expires_at is not None and token.expires_at <= now:
            expires += " (expired)"
        prefix = f"{token.prefix}…" if token.prefix else ""
        table.add_row(token.id, owner, token.name, prefix, _when(token.created_at), _when(token.last_used_at), expires)
    console.print(table)


@tokens_app.command("revoke")
def tokens_revoke(
    token_ids: Annotated[list[str], typer.Argument(metavar="TOKEN_ID", help="Token IDs (from `limner tokens list`).")],
) -> None:
    """Delete API tokens; a running server stops accepting them within 30 seconds."""

    async def work(runtime: Runtime) -> list[str]:
        async with runtime.db.unit_of_work(write=True) as session:
            repo = UserRepository(session)
            missing = [token_id for token_id in token_ids if await repo.revoke_token_for_operator(token_id) is None]
            if missing:
                raise TokenNotFoundError(
                    f"No API token with ID {', '.join(missing)} was found; nothing was revoked.",
                    hint="`limner tokens list` shows the IDs.",
                )
        return token_ids

    for token_id in _with_runtime(work):
        console.print(f"revoked {token_id}")


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply database migrations (the server also does this on start)."""
    from limner.db.session import Database

    try:
        settings = _settings()
    except LimnerError as exc:
        raise _fail(exc) from None

    async def work() -> None:
        db = await Database.open(settings.resolved_database_url)
        try:
            await db.upgrade()
        finally:
            await db.dispose()

    _run(work())
    console.print("database is up to date")


@db_app.command("sweep")
def db_sweep(
    min_age: Annotated[
        float, typer.Option(metavar="SECONDS", help="Only remove orphan files older than this many seconds.")
    ] = 3600.0,
) -> None:
    """Remove stored files that no image record points at (left by a crash mid-save)."""

    async def work(runtime: Runtime) -> Any:
        return await runtime.library.sweep(min_age=min_age)

    report = _with_runtime(work)
    console.print(
        f"removed {report.orphan_blobs_removed} orphan file(s) and {report.temporaries_removed} temporary file(s); "
        f"{len(report.rows_missing_blobs)} record(s) without a file"
    )


def main() -> None:
    """Console script entry point."""
    app(prog_name="limner")
