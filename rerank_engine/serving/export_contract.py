"""The export contract, declared once: the input names every exported cross-encoder graph may take, the
output it gives, and what validation holds it to. The export checks its graphs against it
(rerank_engine.serving.export_validation); the engine feeds a graph by it (rerank_engine.serving.engine).
Light: no heavy imports."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Contract:
    """What every exported cross-encoder graph looks like."""

    inputs: tuple[str, ...] = ("input_ids", "attention_mask", "token_type_ids")  # every name a graph may take
    optional_inputs: tuple[str, ...] = ("token_type_ids",)  # fed only where the graph declares it
    output: str = "logits"  # [rows, num_labels]: what validation, the probe and the engine (manifest) read
    fp32_atol: float = 1e-4
    # (batch, sequence) shapes fp32 is validated at: the graph runs at all of them, so both axes are dynamic
    shapes: tuple[tuple[int, int], ...] = ((1, 8), (2, 13), (3, 31), (4, 64), (5, 127), (2, 200))
    min_top5_overlap: float = 0.8  # fp16 / int8 variants, mean over probe queries

    @property
    def required_inputs(self) -> tuple[str, ...]:
        """The inputs every graph takes (input_ids, attention_mask)."""
        return tuple(n for n in self.inputs if n not in self.optional_inputs)


CONTRACT = Contract()
