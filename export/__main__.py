"""Export a cross-encoder to ONNX, validated against PyTorch.

python -m export --model <hub id or local dir> --out <dir> [--precision fp32|fp16|int8 ...] [--optimize]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from rerank_engine.errors import RerankEngineError
from rerank_engine.exporting import CONTRACT, export_model
from rerank_engine.manifest import read_manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export", description=__doc__.strip().splitlines()[0])
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
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
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
    except RerankEngineError as exc:
        print(f"export failed: {exc}", file=sys.stderr)
        return 2
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
