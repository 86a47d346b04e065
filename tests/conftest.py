"""Session fixtures: tiny Hugging Face models built locally from a config, their real ONNX exports, and
(for the slow parity tests) the bundled all-MiniLM-L6-v2 encoder with a seeded random one-logit head.

Everything here is real: `rerank_engine.serving.exporting.export_model` (what `python -m export` runs),
onnxruntime sessions, Hugging Face tokenizers. Heavy libraries are imported inside the fixtures so that
collecting the light tests stays light.
"""

from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path

import numpy as np
import pytest

from rerank_engine.probe_pairs import PASSAGES, QUERIES
from rerank_engine.serving.batching import pad_rows

REPO_ROOT = Path(__file__).resolve().parents[1]

# Ray 2.60 clusters started by `ray start` require a token; clients read this mode when ray is imported.
os.environ.setdefault("RAY_AUTH_MODE", "token")
# `ray start --head` does not create the token (only a local ray.init() does, under the user's home): on a
# new machine, CI's included, the tests' heads would refuse to start. Where no token is found, this test
# session uses one of its own, in the environment that every Ray process and client it starts inherits.
if not (
    os.environ.get("RAY_AUTH_TOKEN")
    or os.environ.get("RAY_AUTH_TOKEN_PATH")
    or (Path.home() / ".ray" / "auth_token").is_file()
):
    os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
# A bare ray.init() (the job's, build_index's) starts a Ray of its own in tests, never attaching to a cluster
# found through /tmp/ray/ray_current_cluster: that may be another run's and vanish mid-test. test_job_ray
# points RAY_ADDRESS at its own head for its module.
os.environ["RAY_ADDRESS"] = "local"

# A little real text for the tests that need (query, passage) pairs.
WORDS = [
    "the", "policy", "covers", "flood", "fire", "theft", "and", "liability", "claims", "after", "a",
    "waiting", "period", "of", "thirty", "days", "premiums", "depend", "on", "age", "occupation",
    "health", "history", "deductible", "beneficiary", "annuity", "surrender", "rider",
]  # fmt: skip


@pytest.fixture(scope="session")
def random_pairs():
    """`random_pairs(n, seed, max_words)` -> (queries, passages) of random lengths, a few queries repeated."""

    def make(n: int, seed: int = 0, max_words: int = 120) -> tuple[list[str], list[str]]:
        rng = np.random.default_rng(seed)
        n_queries = max(1, n // 4)
        queries = [" ".join(rng.choice(WORDS, size=rng.integers(2, 12)).tolist()) for _ in range(n_queries)]
        picked = [queries[i] for i in rng.integers(0, len(queries), size=n)]
        passages = [" ".join(rng.choice(WORDS, size=rng.integers(1, max_words)).tolist()) for _ in range(n)]
        return picked, passages

    return make


@pytest.fixture(scope="session")
def bundled_tokenizer():
    from transformers import AutoTokenizer

    from rerank_engine.recall.index import bundled_minilm_dir

    return AutoTokenizer.from_pretrained(str(bundled_minilm_dir()))


def _save_tiny(model_cls, config, tokenizer, out: Path, seed: int = 0) -> Path:
    import torch

    torch.manual_seed(seed)
    model = model_cls(config).eval()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def _bert_config(vocab_size: int, num_labels: int):
    from transformers import BertConfig

    return BertConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=num_labels,
        max_position_embeddings=512,
    )


@pytest.fixture(scope="session")
def headless_model_dir(tmp_path_factory, bundled_tokenizer) -> Path:
    """A tiny random bare BertModel (no classification head) with the MiniLM tokenizer: what export,
    the job and scoring must refuse, and what training may start from."""
    from transformers import BertModel

    config = _bert_config(bundled_tokenizer.vocab_size, num_labels=1)
    return _save_tiny(BertModel, config, bundled_tokenizer, tmp_path_factory.mktemp("bare-bert"))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, bundled_tokenizer) -> Path:
    """A tiny random BertForSequenceClassification (one logit) with the MiniLM WordPiece tokenizer."""
    from transformers import BertForSequenceClassification

    config = _bert_config(bundled_tokenizer.vocab_size, num_labels=1)
    return _save_tiny(
        BertForSequenceClassification, config, bundled_tokenizer, tmp_path_factory.mktemp("tiny-bert")
    )


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory, tiny_model_dir) -> Path:
    from rerank_engine.serving.exporting import export_model

    # A random tiny model scores every pair almost the same (all ≈ 0.50), so int8's ranking agreement
    # with fp32 is noise there: the ranking gate is switched off (min_top5_overlap=0.0). The int8 gate
    # is held against a real model in test_parity_minilm.py.
    out = tmp_path_factory.mktemp("tiny-bert-onnx") / "export"
    return export_model(tiny_model_dir, out, precisions=["fp32", "int8"], min_top5_overlap=0.0)


@pytest.fixture(scope="session")
def tiny_torch_model(tiny_model_dir):
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(str(tiny_model_dir)).eval()


@pytest.fixture(scope="session")
def two_logit_model_dir(tmp_path_factory, bundled_tokenizer) -> Path:
    """The same tiny BERT with a two-logit head (softmax[:, 1] is the relevance probability)."""
    from transformers import BertForSequenceClassification

    config = _bert_config(bundled_tokenizer.vocab_size, num_labels=2)
    return _save_tiny(
        BertForSequenceClassification, config, bundled_tokenizer, tmp_path_factory.mktemp("tiny-bert-2")
    )


@pytest.fixture(scope="session")
def two_logit_export(tmp_path_factory, two_logit_model_dir) -> Path:
    from rerank_engine.serving.exporting import export_model

    out = tmp_path_factory.mktemp("tiny-bert-2-onnx") / "export"
    return export_model(two_logit_model_dir, out, precisions=["fp32"])


@pytest.fixture(scope="session")
def distil_export(tmp_path_factory, bundled_tokenizer) -> tuple[Path, Path]:
    """A tiny DistilBERT (its graph has no token_type_ids input): (model dir, export dir)."""
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    from rerank_engine.serving.exporting import export_model

    config = DistilBertConfig(
        vocab_size=bundled_tokenizer.vocab_size,
        dim=32,
        n_layers=2,
        n_heads=2,
        hidden_dim=64,
        num_labels=1,
        max_position_embeddings=512,
    )
    model_dir = _save_tiny(
        DistilBertForSequenceClassification, config, bundled_tokenizer, tmp_path_factory.mktemp("tiny-distil")
    )
    out = export_model(model_dir, tmp_path_factory.mktemp("tiny-distil-onnx") / "export", precisions=["fp32"])
    return model_dir, out


@pytest.fixture(scope="session")
def minilm_ce_dir(tmp_path_factory) -> Path:
    """The bundled all-MiniLM-L6-v2 encoder under a seeded random one-logit head, saved with its tokenizer."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from rerank_engine.recall.index import bundled_minilm_dir

    src = bundled_minilm_dir()
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(str(src), num_labels=1).eval()
    out = tmp_path_factory.mktemp("minilm-ce")
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(str(src)).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def minilm_export(tmp_path_factory, minilm_ce_dir) -> Path:
    from rerank_engine.serving.exporting import export_model

    # The int8 ranking gate is asserted by the test itself (with the measured figure printed), so the
    # export does not stop on it here.
    out = tmp_path_factory.mktemp("minilm-ce-onnx") / "export"
    return export_model(minilm_ce_dir, out, precisions=["fp32", "int8"], min_top5_overlap=0.0)


@pytest.fixture
def copy_export(tmp_path):
    """Copy an export folder to a fresh place a test may damage."""

    def copy(src: Path, name: str = "copy") -> Path:
        return Path(shutil.copytree(src, tmp_path / name))

    return copy


def torch_logits(model, pairs, pad_id: int = 0) -> np.ndarray:
    """PyTorch reference on the engine's own tokenization, all rows padded to the longest; raw logits."""
    import torch

    length = int(pairs.lengths.max())
    ids, mask = pad_rows(pairs.input_ids, length, pad_id)
    feed = {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)}
    if pairs.token_type_ids is not None and model.config.model_type != "distilbert":
        types, _ = pad_rows(pairs.token_type_ids, length, 0)
        feed["token_type_ids"] = torch.from_numpy(types)
    with torch.inference_mode():
        return model(**feed).logits.float().numpy()


@pytest.fixture(scope="session")
def reference():
    """`reference(model, tokenized_pairs) -> raw logits [n, num_labels]` (the PyTorch ground truth)."""
    return torch_logits


# -- the encoder families (tests/test_families.py), each with a tokenizer of its kind trained here -------
#
# xlm-roberta: Unigram with SentencePiece's ▁ pre-tokenizer, `<s> q </s></s> p </s>`, pad id 1, learned
# positions after the padding index; deberta-v2 (a DeBERTa-v3): Unigram, `[CLS] q [SEP] p [SEP]`, no token
# types; modernbert: byte-level BPE behind a plain PreTrainedTokenizerFast (the pair template lives only in
# tokenizer.json), 8,192 positions; electra: the bundled WordPiece; bert-2: BERT with two logits.


def _texts() -> list[str]:
    """A few hundred short texts to train the tokenizers on."""
    rng = np.random.default_rng(0)
    words = " ".join(QUERIES + PASSAGES).split()
    return QUERIES + PASSAGES + [" ".join(rng.choice(words, size=rng.integers(3, 30))) for _ in range(300)]


def _unigram(specials: list[str], unk: str):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tok.train_from_iterator(
        _texts(), trainers.UnigramTrainer(vocab_size=400, special_tokens=specials, unk_token=unk)
    )
    return tok


def _xlmr_tokenizer():
    from tokenizers import processors
    from transformers import XLMRobertaTokenizerFast

    tok = _unigram(["<s>", "<pad>", "</s>", "<unk>", "<mask>"], "<unk>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    # no model_max_length: as on some hub tokenizers, the limit must come from the learned positions
    return XLMRobertaTokenizerFast(
        tokenizer_object=tok,
        **dict(bos_token="<s>", eos_token="</s>", sep_token="</s>", cls_token="<s>"),
        **dict(unk_token="<unk>", pad_token="<pad>", mask_token="<mask>"),
    )


def _deberta_tokenizer():
    from tokenizers import processors
    from transformers import DebertaV2TokenizerFast

    tok = _unigram(["[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]"], "[UNK]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", 1), ("[SEP]", 2)],
    )
    return DebertaV2TokenizerFast(
        tokenizer_object=tok,
        **dict(bos_token="[CLS]", eos_token="[SEP]", sep_token="[SEP]", cls_token="[CLS]"),
        **dict(unk_token="[UNK]", pad_token="[PAD]", mask_token="[MASK]", model_max_length=512),
    )


def _modernbert_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"]
    trainer = trainers.BpeTrainer(
        vocab_size=600, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(_texts(), trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        **dict(
            unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]", pad_token="[PAD]", mask_token="[MASK]"
        ),
        model_max_length=8192,
        model_input_names=["input_ids", "attention_mask"],
    )


def _electra_tokenizer():
    from transformers import ElectraTokenizerFast

    from rerank_engine.recall.index import bundled_minilm_dir

    return ElectraTokenizerFast(vocab_file=str(bundled_minilm_dir() / "vocab.txt"), model_max_length=512)


SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)


def _build_family(family: str, out: Path, **overrides) -> Path:
    """Save a tiny random `family` cross-encoder (config `overrides` applied) and its tokenizer into `out`."""
    import transformers as tf

    if family == "xlm-roberta":
        tokenizer = _xlmr_tokenizer()
        config = tf.XLMRobertaConfig(
            vocab_size=len(tokenizer), max_position_embeddings=514, type_vocab_size=1, pad_token_id=1,
            bos_token_id=0, eos_token_id=2, num_labels=1, **SMALL,
        )  # fmt: skip
        model_cls = tf.XLMRobertaForSequenceClassification
    elif family == "deberta-v2":
        tokenizer = _deberta_tokenizer()
        config = tf.DebertaV2Config(  # the DeBERTa-v3 layout: relative attention, no absolute positions
            vocab_size=len(tokenizer), max_position_embeddings=512, type_vocab_size=0,
            relative_attention=True, position_buckets=64, pos_att_type=["p2c", "c2p"],
            position_biased_input=False, pad_token_id=0, num_labels=1, **SMALL,
        )  # fmt: skip
        model_cls = tf.DebertaV2ForSequenceClassification
    elif family == "modernbert":
        tokenizer = _modernbert_tokenizer()
        ids = {
            k: tokenizer.convert_tokens_to_ids(t)
            for k, t in [("pad", "[PAD]"), ("cls", "[CLS]"), ("sep", "[SEP]")]
        }
        config = tf.ModernBertConfig(
            vocab_size=len(tokenizer), max_position_embeddings=8192, pad_token_id=ids["pad"],
            cls_token_id=ids["cls"], sep_token_id=ids["sep"], bos_token_id=ids["cls"],
            eos_token_id=ids["sep"],
            global_attn_every_n_layers=2, local_attention=16, num_labels=1, **SMALL,
        )  # fmt: skip
        model_cls = tf.ModernBertForSequenceClassification
    elif family == "electra":
        tokenizer = _electra_tokenizer()
        config = tf.ElectraConfig(
            vocab_size=len(tokenizer), embedding_size=16, max_position_embeddings=512, num_labels=1, **SMALL
        )
        model_cls = tf.ElectraForSequenceClassification
    elif family == "bert-2":
        from rerank_engine.recall.index import bundled_minilm_dir

        tokenizer = tf.AutoTokenizer.from_pretrained(str(bundled_minilm_dir()))
        config = tf.BertConfig(vocab_size=len(tokenizer), max_position_embeddings=512, num_labels=2, **SMALL)
        model_cls = tf.BertForSequenceClassification
    else:
        raise ValueError(f"unknown family {family!r}")
    config.initializer_range = 0.2  # logits far enough from 0 that a padding or position bug shows
    for key, value in overrides.items():
        setattr(config, key, value)
    return _save_tiny(model_cls, config, tokenizer, out)


@pytest.fixture(scope="session")
def build_family():
    """`build_family(name, out, **config_overrides) -> out`: a tiny random cross-encoder of a family."""
    return _build_family


@pytest.fixture(scope="session")
def family_model(tmp_path_factory):
    """`family_model(name) -> model dir`, each built once per session."""
    built: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in built:
            built[family] = _build_family(family, tmp_path_factory.mktemp(f"tiny-{family}"))
        return built[family]

    return get


@pytest.fixture(scope="session")
def family_dirs(tmp_path_factory, family_model):
    """`family_dirs(name) -> (model dir, export dir)`, each exported once per session."""
    from rerank_engine.serving.exporting import export_model

    exported: dict[str, Path] = {}

    def get(family: str) -> tuple[Path, Path]:
        src = family_model(family)
        if family not in exported:
            out = tmp_path_factory.mktemp(f"tiny-{family}-onnx") / "export"
            exported[family] = export_model(src, out, precisions=["fp32"])
        return src, exported[family]

    return get


# Tiny LLM rerankers (tests/test_llm_reranker.py, tests/test_job_ray.py).
# Qwen2 / Qwen3's pre-tokenizer split (their tokenizer.json)
QWEN_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|"
    r"\s+(?!\S)|\s+"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def _qwen_tokenizer(drop_word: str | None = None):
    """Byte-level BPE behind Qwen2TokenizerFast, trained on the probe texts, the prompt and lines of
    "yes" / "no" (so that both are single tokens), less every text holding `drop_word`."""
    from tokenizers import (
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import Qwen2TokenizerFast

    from rerank_engine.serving.llm_reranker import QWEN3_RERANKER

    rng = np.random.default_rng(0)
    words = " ".join(QUERIES + PASSAGES).split()
    texts = QUERIES + PASSAGES + [" ".join(rng.choice(words, size=rng.integers(3, 30))) for _ in range(300)]
    texts += [QWEN3_RERANKER.prefix, QWEN3_RERANKER.text(QWEN3_RERANKER.instruction, "q", "p")] * 20
    texts += ["yes", "no", "yes\nno", "Yes, no."] * 30
    if drop_word is not None:
        texts = [t for t in texts if drop_word not in t]
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=700, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(texts, trainer)
    tokenizer = Qwen2TokenizerFast(
        tokenizer_object=tok,
        unk_token=None,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
        model_max_length=131072,
    )
    tokenizer.add_tokens(["<think>", "</think>"])
    return tokenizer


def _build_qwen3(out, *, tied: bool = True, drop_word: str | None = None):
    """A tiny random Qwen3ForCausalLM (the shape of Qwen/Qwen3-Reranker-0.6B, 2 layers, hidden 32)."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    tokenizer = _qwen_tokenizer(drop_word)
    config = Qwen3Config(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=tied, initializer_range=0.1,
    )  # fmt: skip
    return _save_tiny(Qwen3ForCausalLM, config, tokenizer, out)


@pytest.fixture(scope="session")
def build_qwen3():
    """`build_qwen3(out, tied=True, drop_word=None) -> out`: a tiny random Qwen3-Reranker-shaped causal LM."""
    return _build_qwen3


@pytest.fixture(scope="session")
def qwen3_dir(tmp_path_factory):
    return _build_qwen3(tmp_path_factory.mktemp("tiny-qwen3"))


@pytest.fixture(scope="session")
def qwen3_export(tmp_path_factory, qwen3_dir):
    from rerank_engine.serving.exporting import export_model

    return export_model(qwen3_dir, tmp_path_factory.mktemp("tiny-qwen3-onnx") / "export", precisions=["fp32"])


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray_node(cmd: list[str], env: dict, log_path: Path, ready):
    """Start `ray start … --block` in its own session and wait until `ready()` is true."""
    import subprocess
    import time

    log = log_path.open("w")
    node = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    node.log = log
    deadline = time.monotonic() + 120
    while not ready():
        assert node.poll() is None, f"ray start exited {node.returncode}: see {log_path}"
        assert time.monotonic() < deadline, f"ray start not up after 120 s: see {log_path}"
        time.sleep(0.5)
    return node


def _stop_ray_node(node) -> None:
    """SIGTERM to `ray start --block` stops this node's processes and no other Ray on the machine."""
    import signal
    import subprocess

    node.terminate()
    try:
        node.wait(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(node.pid, signal.SIGKILL)
        node.wait()
    node.log.close()


def _node_ports() -> list[str]:
    """Ports that default to fixed numbers: another Ray node on this machine would hold them already."""
    return [
        f"--dashboard-agent-listen-port={free_port()}",
        f"--dashboard-agent-grpc-port={free_port()}",
        f"--metrics-export-port={free_port()}",
        f"--node-manager-port={free_port()}",
        f"--object-manager-port={free_port()}",
        f"--runtime-env-agent-port={free_port()}",
    ]


@pytest.fixture(scope="session")
def start_ray_head():
    """`with start_ray_head(folder, *ray_start_args, num_cpus=2, env=None) as head:` a head of our own
    beside any other Ray on the machine: its own temp dir (so its address never lands in
    /tmp/ray/ray_current_cluster, where another run would find it), its own ports, and
    `ray start --block`, whose SIGTERM stops this cluster and no other (`ray stop` would stop every Ray
    here). `env` is added to the node's environment (its workers inherit it). Inside, this process is
    connected to it and RAY_ADDRESS points at it; `head` holds its address, dashboard and metrics URLs,
    env (for subprocesses), temp_dir."""
    import sys
    import tempfile
    from contextlib import contextmanager

    ray_cli = str(Path(sys.executable).parent / "ray")

    @contextmanager
    def start(folder: Path, *extra: str, num_cpus: int = 2, env: dict | None = None):
        import ray

        if ray.is_initialized():  # a local Ray left by an earlier module (build_index, benchmarks): not ours
            ray.shutdown()
        port, dash, metrics = free_port(), free_port(), free_port()
        temp_dir = Path(tempfile.mkdtemp(prefix="ray-test-"))  # short: socket paths must stay < 108 chars
        env = {
            **os.environ,
            **(env or {}),
            "RAY_AUTH_MODE": "token",
            "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        }
        env.pop("RAY_ADDRESS", None)
        cmd = [
            ray_cli,
            "start",
            "--head",
            "--block",
            f"--port={port}",
            f"--num-cpus={num_cpus}",
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dash}",
            f"--dashboard-agent-listen-port={free_port()}",
            f"--ray-client-server-port={free_port()}",
            f"--metrics-export-port={metrics}",
            "--disable-usage-stats",
            f"--temp-dir={temp_dir}",
            *extra,
        ]
        head = _ray_node(
            cmd, env, Path(folder) / "ray_start.log", lambda: (temp_dir / "ray_current_cluster").exists()
        )
        try:
            address = f"127.0.0.1:{port}"
            with pytest.MonkeyPatch.context() as mp:
                mp.setenv("RAY_ADDRESS", address)  # the job's own ray.init and the state API find this head
                ray.init(address=address)
                try:
                    yield {
                        "address": address,
                        "dashboard": f"http://127.0.0.1:{dash}",
                        "metrics": f"http://127.0.0.1:{metrics}/metrics",  # the head's Prometheus endpoint
                        "env": env,
                        "temp_dir": temp_dir,
                    }
                finally:
                    ray.shutdown()
        finally:
            _stop_ray_node(head)
            shutil.rmtree(temp_dir, ignore_errors=True)

    return start


@pytest.fixture(scope="session")
def start_ray_worker():
    """`with start_ray_worker(head, folder, num_cpus=1, env=None) as worker:` a worker node joined to a
    head from `start_ray_head`, on this machine, with its own temp dir and ports; `worker` holds its Ray
    `node_id` and `temp_dir`. Leaving the block stops that node alone."""
    import sys
    import tempfile
    from contextlib import contextmanager

    ray_cli = str(Path(sys.executable).parent / "ray")

    @contextmanager
    def start(head: dict, folder: Path, num_cpus: int = 1, env: dict | None = None):
        import ray

        before = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
        temp_dir = Path(tempfile.mkdtemp(prefix="ray-worker-"))
        cmd = [
            ray_cli,
            "start",
            f"--address={head['address']}",
            "--block",
            f"--num-cpus={num_cpus}",
            "--num-gpus=0",
            "--disable-usage-stats",
            f"--temp-dir={temp_dir}",
            *_node_ports(),
        ]

        def joined() -> set[str]:
            return {n["NodeID"] for n in ray.nodes() if n["Alive"]} - before

        node = _ray_node(cmd, {**head["env"], **(env or {})}, Path(folder) / "ray_worker.log", joined)
        try:
            (node_id,) = joined()
            yield {"node_id": node_id, "temp_dir": temp_dir}
        finally:
            _stop_ray_node(node)
            shutil.rmtree(temp_dir, ignore_errors=True)

    return start


@pytest.fixture(scope="session")
def assert_same_checkpoint():
    """`check(a, b)`: the `checkpoint.pt` of run folders a and b hold the same data order and weights
    (what an interrupted, resumed run must end with)."""
    import torch

    def check(a: Path, b: Path) -> None:
        one = torch.load(Path(a) / "checkpoint.pt", weights_only=True)
        two = torch.load(Path(b) / "checkpoint.pt", weights_only=True)
        assert one["sampler"] == two["sampler"]
        for name, tensor in one["model"].items():
            assert torch.equal(tensor, two["model"][name]), name

    return check
