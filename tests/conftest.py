"""Shared fixtures: tiny randomly initialised models built from configs, and a word-level tokenizer."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

WORDS = ("the a star planet orbit telescope galaxy comet moon sun bake flour oven salt sugar "
         "butter pan knife goal match player team coach league ball pitch red blue green "
         "quick slow big small runs shines cooks kicks over under near far and or is was").split()

TEXTS = [
    "the star shines over the galaxy",
    "a comet runs near the sun and the moon",
    "the telescope",
    "bake the flour and sugar in a big oven near the small pan with butter and salt",
    "the coach kicks the ball",
    "a player runs over the pitch and the team was quick and the league is big and far",
    "red planet",
    "the green moon was slow",
    "salt",
    "the goal of the match is a quick ball over the blue pitch",
]
LABELS = ["space", "space", "space", "food", "sport", "sport", "space", "space", "food", "sport"]

ENCODERS = ("bert", "roberta", "distilbert")
DECODERS = ("gpt2", "llama", "mistral", "qwen2", "gpt_neox")
FAMILIES = ENCODERS + DECODERS


def make_tokenizer(kind: str, padding_side: str = "right") -> PreTrainedTokenizerFast:
    """A word-level tokenizer over WORDS: [CLS] .. [SEP] for encoders, [BOS] .. for decoders."""
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[BOS]"]
    vocab = {w: i for i, w in enumerate(specials + WORDS)}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    if kind in ENCODERS:
        tk.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    else:
        tk.post_processor = processors.TemplateProcessing(single="[BOS] $A", special_tokens=[("[BOS]", 4)])
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="[PAD]", unk_token="[UNK]",
                                  cls_token="[CLS]", sep_token="[SEP]", bos_token="[BOS]",
                                  model_max_length=64)
    tok.padding_side = padding_side
    return tok


def make_module(kind: str, seed: int = 0, n_layers: int = 3):
    """A tiny randomly initialised transformers model of the given family."""
    import transformers as tf

    vocab = len(WORDS) + 5
    common = dict(vocab_size=vocab, num_hidden_layers=n_layers, hidden_size=32,
                  num_attention_heads=4, intermediate_size=64, pad_token_id=0)
    if kind == "gpt2":
        cfg, cls = tf.GPT2Config(vocab_size=vocab, n_layer=n_layers, n_embd=32, n_head=4,
                                 n_positions=64, bos_token_id=4, eos_token_id=4), tf.GPT2LMHeadModel
    elif kind == "bert":
        cfg, cls = tf.BertConfig(max_position_embeddings=64, **common), tf.BertModel
    elif kind == "roberta":
        cfg, cls = tf.RobertaConfig(max_position_embeddings=70, **common), tf.RobertaModel
    elif kind == "distilbert":
        cfg, cls = tf.DistilBertConfig(vocab_size=vocab, n_layers=n_layers, dim=32, n_heads=4,
                                       hidden_dim=64, max_position_embeddings=64, pad_token_id=0), tf.DistilBertModel
    elif kind == "llama":
        cfg, cls = tf.LlamaConfig(num_key_value_heads=2, max_position_embeddings=64, **common), tf.LlamaForCausalLM
    elif kind == "mistral":
        cfg, cls = tf.MistralConfig(num_key_value_heads=2, max_position_embeddings=64, **common), tf.MistralForCausalLM
    elif kind == "qwen2":
        cfg, cls = tf.Qwen2Config(num_key_value_heads=2, max_position_embeddings=64, **common), tf.Qwen2ForCausalLM
    elif kind == "gpt_neox":
        cfg, cls = tf.GPTNeoXConfig(max_position_embeddings=64, **common), tf.GPTNeoXForCausalLM
    else:
        raise ValueError(kind)
    torch.manual_seed(seed)
    return cls(cfg).eval()


def make_model(kind: str, seed: int = 0, padding_side: str = "right", n_layers: int = 3):
    import llmri

    return llmri.Model.from_module(make_module(kind, seed, n_layers),
                                   make_tokenizer(kind, padding_side), name=f"tiny-{kind}")


@pytest.fixture
def texts():
    return list(TEXTS)


@pytest.fixture
def corpus():
    import llmri

    return llmri.Corpus(TEXTS, LABELS)


def tiny_cli_folder(tmp, kind: str = "llama"):
    """A folder holding a tiny model saved as ``tiny/`` and the test corpus as ``c.csv`` (x3),
    for tests that run the ``llmri`` command."""
    make_module(kind).save_pretrained(tmp / "tiny")
    make_tokenizer(kind).save_pretrained(tmp / "tiny")
    rows = "".join(f"{t},{lab}\n" for t, lab in zip(TEXTS * 3, LABELS * 3))
    (tmp / "c.csv").write_text("text,label\n" + rows)
    return tmp
