"""Run the server: ``python -m charformer.serve --ckpt DIR [--adapter NAME=DIR ...] [--host H] [--port P]``.

    python -m charformer.serve --ckpt out/ctb6_cws                         # segmentation on 127.0.0.1:8000
    python -m charformer.serve --ckpt out/mlm --adapter cws=out/cws_lora --adapter ner=out/ner_lora
    CHARFORMER_API_TOKEN=... python -m charformer.serve --ckpt out/ctb6_cws --host 0.0.0.0

``--ckpt`` is a fine-tuned checkpoint or adapter (finetune.py --out), a causal pretrained checkpoint
(generation), or the base checkpoint that the ``--adapter`` directories were fine-tuned from; an adapter made
for another base stops the server at start-up. Without an API token (``$CHARFORMER_API_TOKEN`` or
``--token-file``) the server only listens on loopback addresses. SIGTERM or Ctrl-C stops it gracefully: it
stops accepting connections and answers the requests in flight first. Logs give lengths and timings only.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass, field

from ..cli import add_dataclass_options, build_dataclass
from ..errors import CharformerError, run_cli

try:
    import uvicorn

    from .app import BatchConfig, Service, build_app
except ImportError as e:  # the web stack is an optional extra
    raise SystemExit(f"error: python -m charformer.serve needs the serve extra ({e.name} is missing): "
                     "pip install 'charformer[serve]'") from None
from .auth import check_bind, load_token
from .limits import Limits
from .models import load_served

GRACEFUL_SECONDS = 30  # how long a stopping server waits for requests in flight before closing them


@dataclass
class ServeOptions:
    ckpt: str
    adapters: dict[str, str] = field(default_factory=dict)
    host: str = "127.0.0.1"
    port: int = 8000
    token_file: str | None = None
    device: str = "auto"
    int8: bool = False
    log_level: str = "info"


def _adapter(text: str) -> tuple[str, str]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=DIR, got {text!r}")
    return name, path


def parse_args(argv: list[str] | None) -> tuple[ServeOptions, Limits, BatchConfig]:
    # Named as it was started: "charformer serve" by the charformer command, else python -m charformer.serve.
    prog = "python -m charformer.serve" if sys.argv[0].endswith("__main__.py") else None
    p = argparse.ArgumentParser(prog=prog, description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, help="checkpoint, adapter, or the adapters' base checkpoint")
    p.add_argument("--adapter", type=_adapter, action="append", default=[], metavar="NAME=DIR",
                   help="an adapter for --ckpt, chosen per request by NAME (repeatable)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1; any other needs a token)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--token-file", help="file holding the API token (else $CHARFORMER_API_TOKEN)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--int8", action="store_true", help="int8 weights in the linear layers (CPU; charformer.quantize)")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    add_dataclass_options(p, BatchConfig, group="batching")
    add_dataclass_options(p, Limits, group="limits")
    args = p.parse_args(argv)
    names = [name for name, _ in args.adapter]
    if len(set(names)) != len(names):
        raise CharformerError(f"--adapter names must differ, got {names}")
    options = ServeOptions(ckpt=args.ckpt, adapters=dict(args.adapter), host=args.host, port=args.port,
                           token_file=args.token_file, device=args.device, int8=args.int8, log_level=args.log_level)
    given = {k: v for k, v in vars(args).items() if v is not None}
    return options, build_dataclass(Limits, given), build_dataclass(BatchConfig, given)


def main(argv: list[str] | None = None) -> int:
    options, limits, batch = parse_args(argv)
    token = load_token(options.token_file)
    check_bind(options.host, token)
    if batch.max_batch < 1 or batch.max_wait_ms < 0:
        raise CharformerError("need --max-batch >= 1 and --max-wait-ms >= 0")
    logging.basicConfig(level=options.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    base, adapters = load_served(options.ckpt, options.adapters, device=options.device, int8=options.int8)
    service = Service(base, adapters, limits=limits, token=token, batch=batch)
    config = uvicorn.Config(build_app(service), host=options.host, port=options.port, log_level=options.log_level,
                            access_log=False, timeout_graceful_shutdown=GRACEFUL_SECONDS, server_header=False)
    try:
        uvicorn.Server(config).run()
    except KeyboardInterrupt:  # uvicorn raises the SIGTERM / SIGINT it handled again once it has shut down
        pass
    return 0


if __name__ == "__main__":
    run_cli(main)
