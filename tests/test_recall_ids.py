"""The bi-encoder's model id keys the embedding cache (`embed_cached`), so it must change with the weights."""

from __future__ import annotations

from rerank_engine.recall.index import BiEncoder


def test_describe_changes_when_weights_change_in_place(tmp_path, bundled_tokenizer):
    """Retraining a bi-encoder into the same folder must not keep its id (else stale cached embeddings).

    `BiEncoder.describe` hashes config.json and only the *size* of model.safetensors; same architecture →
    same size, so new weights get the old id and `embed_cached` returns the old model's embeddings.
    """
    import torch
    from transformers import BertConfig, BertModel

    config = BertConfig(
        vocab_size=bundled_tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
    )
    folder = tmp_path / "bi-encoder"
    ids = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        BertModel(config).save_pretrained(folder)  # retrained in place
        ids.append(BiEncoder.describe(folder))
    assert ids[0] != ids[1], f"new weights kept the id {ids[0]}: embed_cached would serve stale vectors"
