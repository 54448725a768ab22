"""Token Recycling, live: a Gradio app that races plain decoding against Token Recycling on one model.

Token Recycling (Luo et al., "Turning Trash into Treasure: Accelerating Inference of Large Language
Models with Token Recycling", ACL 2025, arXiv 2408.08696) drafts from an adjacency matrix of the
model's own recent top-k predictions and verifies a whole draft tree in one forward pass.

This file is the command line: it loads the model and starts the page (`webapp`). On a HuggingFace
Space it binds where the Space says (`GRADIO_SERVER_NAME`, `GRADIO_SERVER_PORT`); on a ZeroGPU Space it
races inside `spaces.GPU` calls (`webapp.runner`).

    python app.py                      # bundled SmolLM2-135M-Instruct on http://127.0.0.1:7860
    python app.py --model HuggingFaceTB/SmolLM2-360M-Instruct --device cuda
"""

from __future__ import annotations

import argparse
import os
import sys

from tr.costs import LearnedCost
from tr.device.calibrate import device_curve
from tr.device.model import BUNDLED, DTYPE_CHOICES, ModelLoadError, load_model
from tr.device.primed import describe_primed
from webapp.downloads import Downloads
from webapp.layout import build_demo
from webapp.log import configure_logging
from webapp.runner import prepare_zero_gpu, race_runner
from webapp.session import STATE_SESSIONS

DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 7860


def port_number(text: str) -> int:
    """A TCP port, 1 to 65535 (argparse reports anything else in one line)."""
    if not text.strip().isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"must be a whole number from 1 to 65535, got {text!r}")
    return int(text)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Race plain decoding against Token Recycling in the browser.")
    parser.add_argument("--model", default=BUNDLED,
                        help=f"hub id or local folder of a causal LM (default: {BUNDLED}, the packaged "
                             "SmolLM2-135M-Instruct)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="default: auto")
    parser.add_argument("--dtype", default="float32", choices=list(DTYPE_CHOICES),
                        help="default: float32; auto: bfloat16 where the CPU or GPU has native bf16, else "
                             "float32 (bf16 output equal to plain decoding is verified on AVX512-BF16 CPUs, "
                             "not yet on AMX ones)")
    parser.add_argument("--port", type=port_number, default=None,
                        help=f"port to listen on (default: $GRADIO_SERVER_PORT, else {DEFAULT_PORT})")
    parser.add_argument("--host", default=None,
                        help="address to listen on, 0.0.0.0 for all (default: $GRADIO_SERVER_NAME, as a "
                             f"HuggingFace Space sets it, else {DEFAULT_HOST})")
    parser.add_argument("--share", action="store_true", help="also open a public gradio.live link")
    parser.add_argument("--no-mcp", action="store_true",
                        help="do not serve the race as an MCP tool at /gradio_api/mcp/ (served by default)")
    return parser.parse_args(argv)


def binding(args: argparse.Namespace) -> tuple[str, int]:
    """Flags win; otherwise the environment a Space (or Gradio's own launch) uses; else the laptop default."""
    host = args.host or os.environ.get("GRADIO_SERVER_NAME") or DEFAULT_HOST
    if args.port is not None:
        return host, args.port
    try:
        return host, port_number(os.environ.get("GRADIO_SERVER_PORT", str(DEFAULT_PORT)))
    except argparse.ArgumentTypeError as err:
        raise SystemExit(f"error: GRADIO_SERVER_PORT {err}") from None


def main(argv: list[str] | None = None) -> int:
    zero_gpu = prepare_zero_gpu()  # before anything touches CUDA, as ZeroGPU requires
    args = parse_args(argv)
    host, port = binding(args)
    configure_logging()
    note = " (the first load converts the bundled GGUF: about 30 s)" if args.model == BUNDLED else ""
    print(f"Loading model {args.model!r} on {args.device}{note}...", flush=True)
    try:
        lm = load_model(args.model, args.device, args.dtype)
    except ModelLoadError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"Loaded {lm.name} ({lm.vocab_size:,} tokens, {lm.device}, {str(lm.dtype).removeprefix('torch.')}) "
          f"from {lm.origin}.", flush=True)
    print(f"Precision: {lm.dtype_note}.", flush=True)
    print(f"Primed start: {describe_primed(lm)}.", flush=True)
    # The device's verification cost, measured once per model, device, dtype and kernel settings and then
    # read from disk. A ZeroGPU main process has no GPU to measure on: the first race measures it there.
    costs = None if zero_gpu else LearnedCost(device_curve(lm))
    downloads = Downloads()
    demo = build_demo(lm, costs, race_runner(lm), model_note=" (ZeroGPU: a GPU is attached for each run)"
                      if zero_gpu else "", downloads=downloads)
    print(f"Serving on http://{host}:{port}", flush=True)
    try:
        demo.launch(server_name=host, server_port=port, share=args.share, state_session_capacity=STATE_SESSIONS,
                    mcp_server=not args.no_mcp)
    except OSError as err:  # e.g. the port is taken
        print(f"error: could not start the web server on {host}:{port}: {err}", file=sys.stderr)
        return 1
    finally:
        downloads.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
