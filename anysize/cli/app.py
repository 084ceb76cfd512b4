"""``anysize app``: the web UI, a Gradio page over the same registry, API and PNG metadata."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading

from ..errors import InvalidArgumentError, OutputError
from .console import EXIT_OK, PROG, library_output
from .model_options import add_model_options, add_runtime_options, check_model_options, load_model

#: set to stop a running ``anysize app`` (SIGTERM and Ctrl-C do; so may a program that embeds it)
STOP = threading.Event()

HELP = "serve the web UI: methods side by side, live progress, cancel, PNG in and out"

EPILOG = """\
examples:
  anysize app                                     # the embedded toy model at http://127.0.0.1:7860
  anysize app --model stabilityai/stable-diffusion-xl-base-1.0 --dtype fp16 --device cuda
  anysize app --host 0.0.0.0 --auth alice:s3cret  # reachable from other machines, behind a password
  anysize app --lora-dir ~/loras --controlnet canny=lllyasviel/control_v11p_sd15_canny --controlnet ./depth-net \\
      --model stable-diffusion-v1-5/stable-diffusion-v1-5 --dtype fp16 --device cuda
                                                  # the LoRAs of ~/loras, ControlNets "canny" and "depth-net"
"""


def configure(p: argparse.ArgumentParser) -> None:
    from ..app.handlers import DEFAULT_QUEUE
    from ..app.server import AUTH_ENV, DEFAULT_HOST, DEFAULT_PORT

    p.formatter_class, p.epilog = argparse.RawDescriptionHelpFormatter, EPILOG
    p.description = f"""\
Serve a web page (Gradio, extra [app]: pip install 'anysize[app]') over one model, loaded once
and shared by every request: generate with any registered method and its options, compare
methods side by side on the same prompt, seed and size (seconds, network calls, an image slider),
upscale an image, and drop a PNG made by anysize (or with A1111 parameters) to fill the form.
Every result downloads as the PNG 'anysize generate' writes. Named API endpoints /generate,
/compare, /upscale and /read_png answer gradio_client.

One run uses the device at a time; --queue more wait, in order, with their place shown; past
that a request gets "busy: ... try again in a moment". Bad input gets the command line's
one-line message in the page. Without --model the embedded toy model is served, offline, at once.
Nothing is fetched from the internet: Gradio's analytics and share links are off.

LoRAs and ControlNets are declared by the server, never typed into the page as paths: the
page lists the *.safetensors files of every --lora-dir folder (sub-folders too; "refresh" and
every page load list them anew), each with a weight; each --controlnet is loaded once at start-up
on the app's device and dtype, checked against the model, and offered by its NAME (default: the
folder's or hub id's last part) in up to two ControlNet units (image, scale, start, end, mode).
Regional prompts (X,Y,W,H: prompt lines or a JSON file) go with the methods that take them.

The app binds to {DEFAULT_HOST}, this machine only. Another --host (e.g. 0.0.0.0) makes it
reachable from other machines and prints a warning; protect it with --auth USER:PASS or the
{AUTH_ENV} environment variable."""
    add_model_options(p)
    add_runtime_options(p)
    p.add_argument("--host", default=DEFAULT_HOST, help=f"address to serve on (default: {DEFAULT_HOST}, this machine only)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default: {DEFAULT_PORT})")
    p.add_argument("--queue", type=int, default=DEFAULT_QUEUE, metavar="N",
                   help=f"runs that may wait while one runs on the device; more get a busy message (default: "
                   f"{DEFAULT_QUEUE}; 0: none wait)")
    p.add_argument("--auth", metavar="USER:PASS", default=None,
                   help=f"ask for this user name and password (default: ${AUTH_ENV} if set, else none)")
    p.add_argument("--out", metavar="DIR", default=None,
                   help="keep every PNG the app makes in DIR, one folder per run (default: a temporary folder, "
                   "removed when the app stops)")
    p.add_argument("--lora-dir", metavar="DIR", action="append", default=[],
                   help="offer the LoRA weight files (*.safetensors) of DIR in the page (repeatable)")
    p.add_argument("--controlnet", metavar="[NAME=]PATH", action="append", default=[],
                   help="load this ControlNet (a diffusers folder or hub id of the model's family) once and offer it "
                   "as NAME (default: its folder's name; repeatable)")
    p.add_argument("--quiet", "-q", action="store_true", help="print only the address")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..app import server

    # ---- everything that can be checked without the model (and without Gradio)
    if args.queue < 0:
        raise InvalidArgumentError(f"--queue must be an integer >= 0, got {args.queue}")
    auth_text, source = args.auth, "--auth"
    if auth_text is None and os.environ.get(server.AUTH_ENV):
        auth_text, source = os.environ[server.AUTH_ENV], server.AUTH_ENV
    auth = server.parse_auth(auth_text, source=source)
    server.check_port(args.host, args.port)
    device = check_model_options(args)
    from ..app.handlers import check_controlnet_specs, check_lora_dirs

    lora_dirs = check_lora_dirs(args.lora_dir)
    check_controlnet_specs(args.controlnet)
    if args.out is not None:
        try:
            os.makedirs(args.out, exist_ok=True)
        except OSError as e:
            raise OutputError(f"cannot use --out {args.out}: {e.strerror or e}") from None
        if not os.access(args.out, os.W_OK | os.X_OK):
            raise OutputError(f"cannot use --out {args.out}: the directory is not writable")
    server.offline_environment()
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise InvalidArgumentError("anysize app needs Gradio: pip install 'anysize[app]'") from None
    warning = server.host_warning(args.host, auth is not None)
    if warning:
        print(f"{PROG} app: warning: {warning}", file=sys.stderr, flush=True)

    from ..app.handlers import Service

    with library_output(args.quiet):
        adapter = load_model(args, device)
        service = Service.serving(adapter, args.model, queue=args.queue, out_dir=args.out, lora_dirs=lora_dirs,
                                  controlnets=args.controlnet)  # each ControlNet loaded once, here
    STOP.clear()
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, lambda *_: STOP.set()) if main_thread else None
    running = server.launch(service, host=args.host, port=args.port, auth=auth)
    try:
        if not args.quiet:
            print(f"{PROG} app: serving {service.description()}", file=sys.stderr, flush=True)
            print(f"{PROG} app: open {running.url} (Ctrl-C stops it)", file=sys.stderr, flush=True)
        print(running.url, flush=True)
        while not STOP.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
        running.close()
        service.close()
    return EXIT_OK
