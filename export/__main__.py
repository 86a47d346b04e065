"""Export a cross-encoder to ONNX, validated against PyTorch.

    python -m export --model <hub id or local dir> --out <dir> [--precision fp32|fp16|int8 ...] [--optimize]

Prints the export folder, the model id and each variant's validation figures as JSON.
"""

from __future__ import annotations

import json
import sys

from rerank_engine import cli
from rerank_engine.serving.export_contract import CONTRACT
from rerank_engine.serving.exporting import export_model
from rerank_engine.serving.manifest import read_manifest

EXAMPLE = "--model models/insurance-minilm-l6-ce --out artifacts/export --precision fp32 int8"


def main(argv: list[str] | None = None, prog: str = "python -m export") -> int:
    parser = cli.command_parser(prog, __doc__, EXAMPLE)
    parser.add_argument("--model", required=True, help="Hugging Face hub id or local model folder")
    parser.add_argument("--out", default=None, help="output folder (default: the content-keyed cache)")
    parser.add_argument("--precision", nargs="+", default=["fp32"], choices=["fp32", "fp16", "int8"])
    parser.add_argument("--optimize", action="store_true", help="ORT transformer graph optimisation")
    parser.add_argument("--opset", type=int, default=None)
    parser.add_argument("--max-length", type=int, default=None)
    parser.add_argument("--revision", default=None, help="hub revision (branch, tag or commit)")
    parser.add_argument("--min-top5-overlap", type=float, default=CONTRACT.min_top5_overlap)
    parser.add_argument("--trust-remote-code", action="store_true", help="off unless you ask for it")
    args = parser.parse_args(argv)
    return cli.run_main("export", args, lambda: run(args))


def run(args) -> int:
    out = export_model(
        args.model,
        args.out,
        precisions=args.precision,
        optimize=args.optimize,
        opset=args.opset,
        max_length=args.max_length,
        revision=args.revision,
        trust_remote_code=args.trust_remote_code,
        min_top5_overlap=args.min_top5_overlap,
    )
    manifest = read_manifest(out)
    print(
        json.dumps(
            {
                "out": str(out),
                "model_id": manifest.model_id,
                "variants": {k: v.validation for k, v in manifest.variants.items()},
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
