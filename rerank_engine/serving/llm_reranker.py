"""LLM rerankers asked a yes/no question (Qwen3-Reranker), served as one-logit sequence classifiers.

`Qwen/Qwen3-Reranker-*` are causal LMs: a fixed prompt around (instruction, query, document), and
relevance = softmax([logit("no"), logit("yes")])[yes] at the last position = sigmoid(logit("yes") −
logit("no")). As vLLM (`classifier_from_token: ["no", "yes"]`) and Infinity (`convert_lm.py`) do, the
export turns such a checkpoint into the ordinary one-logit sequence classifier of its family
(`Qwen3ForSequenceClassification`): the same body, a score head whose weight is lm_head[yes] − lm_head[no]
(the LM head's rows, which are the embedding rows where they are tied), pooled at the last token that is
not padding. sigmoid(logit) is then the reference's probability by construction, and the length-bucketed
engine and job serve it like any cross-encoder, without a vocabulary-wide output.

The prompt is data (`YesNoPrompt`, kept in the export manifest) applied where pairs are tokenized
(`PromptEncoder`, used by PairTokenizer and so by the engine and the job's tokenize stage, and by the
export's probe). As the model card does, the body `<Instruct>: … <Query>: … <Document>: …` is tokenized as
one text, cut at the end to what the prefix and suffix leave, and framed by the prefix and suffix ids; the
query is first capped at the tokenizer config's query share, so that a long query never squeezes out the
passage (the model card does not cap it: only an over-long query tokenizes differently).

Light at import (pydantic); the conversion imports torch and transformers.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict

from rerank_engine.errors import ConfigError, ModelFormatError


class YesNoPrompt(BaseModel):
    """The prompt of a yes/no LLM reranker and the two tokens whose logits are compared."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    prefix: str
    body: str  # with {instruction}, {query} and {passage}
    suffix: str
    instruction: str  # the default instruction (tokenizer.instruction replaces it)
    tokens: tuple[str, str] = ("no", "yes")  # (irrelevant, relevant)
    token_ids: tuple[int, int] | None = None  # their ids in the checkpoint's vocabulary (set at export)
    pad_token_id: int | None = None  # the pad id the pooling skips (set at export)

    def text(self, instruction: str, query: str, passage: str) -> str:
        return self.body.format(instruction=instruction, query=query, passage=passage)


# Qwen/Qwen3-Reranker-0.6B / -4B / -8B, as their model card formats the input.
QWEN3_RERANKER = YesNoPrompt(
    name="qwen3-reranker",
    prefix=(
        "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the "
        'Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n'
    ),
    body="<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {passage}",
    suffix="<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n",
    instruction="Given a web search query, retrieve relevant passages that answer the query",
)

# model type → the prompt of the yes/no rerankers of that family (a *ForCausalLM checkpoint of the type)
LLM_RERANKERS = {"qwen3": QWEN3_RERANKER}


def llm_reranker_prompt(config) -> YesNoPrompt | None:
    """The prompt to serve a checkpoint with when its config is a causal LM of a family in `LLM_RERANKERS`
    (Qwen3-Reranker's config says `Qwen3ForCausalLM`); None for anything else."""
    architectures = getattr(config, "architectures", None) or []
    if getattr(config, "model_type", None) not in LLM_RERANKERS:
        return None
    if not any(a.endswith("ForCausalLM") for a in architectures):
        return None
    return LLM_RERANKERS[config.model_type]


def yes_no_token_ids(tokenizer, prompt: YesNoPrompt, model) -> tuple[int, int]:
    """The ids of `prompt.tokens` ("no", "yes"), each of which must be one token of the vocabulary."""
    vocab = tokenizer.get_vocab()
    ids = []
    for token in prompt.tokens:
        if token not in vocab:
            pieces = tokenizer.tokenize(token)
            raise ModelFormatError(
                f"{model}: served as an LLM reranker ({prompt.name}), it is scored by the logits of the "
                f"tokens {list(prompt.tokens)}, each of which must be a single token of its vocabulary; "
                f"{token!r} is not (its tokenizer splits it into {pieces}); expected a "
                f"{prompt.name} checkpoint with its own tokenizer"
            )
        ids.append(int(vocab[token]))
    return ids[0], ids[1]


def to_sequence_classifier(causal_lm, token_ids: tuple[int, int], pad_token_id: int):
    """The conversion rule: `causal_lm` as a one-logit *ForSequenceClassification of its family, sharing
    its body, with score.weight = lm_head[yes] − lm_head[no] and pooling at the last token that is not
    `pad_token_id` (transformers' own pooling). Its logit is logit(yes) − logit(no) at that token."""
    import copy

    import torch
    from transformers import AutoModelForSequenceClassification

    no, yes = token_ids
    lm_head = causal_lm.get_output_embeddings()  # tied or not: the rows the LM scores tokens with
    if getattr(lm_head, "bias", None) is not None:
        raise ModelFormatError(f"{type(causal_lm).__name__}: an LM head with a bias is not converted")
    config = copy.deepcopy(causal_lm.config)
    config.num_labels = 1
    config.pad_token_id = int(pad_token_id)
    config.architectures = [type(causal_lm).__name__.replace("ForCausalLM", "ForSequenceClassification")]
    with torch.device("meta"):  # no second copy of the body's weights: the causal LM's is reused
        classifier = AutoModelForSequenceClassification.from_config(config)
    setattr(classifier, classifier.base_model_prefix, getattr(causal_lm, causal_lm.base_model_prefix))
    with torch.no_grad():
        weight = (lm_head.weight[yes] - lm_head.weight[no]).detach().clone()[None, :]
    classifier.score = torch.nn.Linear(weight.shape[1], 1, bias=False, dtype=weight.dtype)
    classifier.score.weight = torch.nn.Parameter(weight, requires_grad=False)
    if any(p.is_meta for p in classifier.parameters()):
        raise ModelFormatError(f"{type(causal_lm).__name__}: converting it left weights unset")
    return classifier.eval()


def load_llm_reranker(src_dir: Path, model, prompt: YesNoPrompt, trust_remote_code: bool = False):
    """(classifier, tokenizer, prompt with its token ids) for the causal-LM checkpoint in `src_dir`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(
        str(src_dir), use_fast=True, trust_remote_code=trust_remote_code
    )
    token_ids = yes_no_token_ids(tokenizer, prompt, model)
    if tokenizer.pad_token_id is None:
        raise ModelFormatError(
            f"{model}: its tokenizer has no pad token; an LLM reranker's batches are padded and pooled at "
            "the last token that is not padding (Qwen3-Reranker's tokenizer pads with <|endoftext|>)"
        )
    pad = int(tokenizer.pad_token_id)
    suffix = tokenizer(prompt.suffix, add_special_tokens=False)["input_ids"]
    if not suffix or suffix[-1] == pad:
        raise ModelFormatError(f"{model}: the last token of the {prompt.name} prompt is its pad token")
    causal_lm, info = AutoModelForCausalLM.from_pretrained(
        str(src_dir), torch_dtype=torch.float32, trust_remote_code=trust_remote_code, output_loading_info=True
    )
    missing = sorted(info["missing_keys"])
    if missing:
        raise ModelFormatError(
            f"{model}: the causal LM checkpoint lacks {', '.join(missing)}; they would be newly initialised "
            "with random values and every score would be noise"
        )
    classifier = to_sequence_classifier(causal_lm.eval(), token_ids, pad)
    return classifier, tokenizer, prompt.model_copy(update={"token_ids": token_ids, "pad_token_id": pad})


class PromptEncoder:
    """(query, passage) pairs → the token ids of the prompted text, framed by the prefix and suffix ids:
    no padding, at most `max_length` ids, the query capped at `query_cap` tokens, the end of the body
    (the passage's tail) cut to fit."""

    def __init__(
        self,
        tokenizer,
        prompt: YesNoPrompt,
        *,
        max_length: int,
        query_cap: int,
        instruction: str | None = None,
    ):
        self.tokenizer = tokenizer  # a transformers fast tokenizer
        self.prompt = prompt
        self.instruction = instruction if instruction is not None else prompt.instruction
        self.query_cap = query_cap
        self.prefix = self._ids([prompt.prefix])[0]
        self.suffix = self._ids([prompt.suffix])[0]
        self.budget = max_length - len(self.prefix) - len(self.suffix)  # the body's tokens at most
        frame = len(self._ids([prompt.text(self.instruction, "", "")])[0])
        left = self.budget - frame - query_cap
        if left < 1:
            raise ConfigError(
                f"tokenizer.max_length {max_length} leaves no room for the passage in the {prompt.name} "
                f"prompt: {len(self.prefix) + len(self.suffix) + frame} tokens of prompt and instruction "
                f"and up to {query_cap} of query; raise tokenizer.max_length"
            )

    def _ids(self, texts: list[str], max_length: int | None = None) -> list[list[int]]:
        kw = {"truncation": True, "max_length": max_length} if max_length is not None else {}
        return self.tokenizer(texts, add_special_tokens=False, **kw)["input_ids"]

    def _capped(self, queries: list[str]) -> dict[str, str]:
        """Each distinct query, cut after its `query_cap`-th token (at that token's end in the text)."""
        enc = self.tokenizer(queries, add_special_tokens=False, return_offsets_mapping=True)
        out = {}
        for query, ids, offsets in zip(queries, enc["input_ids"], enc["offset_mapping"], strict=True):
            out[query] = query if len(ids) <= self.query_cap else query[: offsets[self.query_cap - 1][1]]
        return out

    def __call__(self, queries: Sequence[str], passages: Sequence[str]) -> list[np.ndarray]:
        if not len(queries):
            return []
        capped = self._capped(list(dict.fromkeys(queries)))
        bodies = [
            self.prompt.text(self.instruction, capped[q], p) for q, p in zip(queries, passages, strict=True)
        ]
        return [
            np.asarray(self.prefix + ids + self.suffix, dtype=np.int64)
            for ids in self._ids(bodies, self.budget)
        ]
