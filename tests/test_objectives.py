"""Objectives on fixed tensors (hand-computed values) and on tiny random decoders."""

import math

import pytest
import torch
from torch import nn

from lm2vec.training.objectives.contrastive import (
    distributed_info_nce,
    false_negatives,
    gather_with_grad,
    info_nce,
    info_nce_from_scores,
)
from lm2vec.training.objectives.mntp import mask_tokens, mntp_loss, mntp_loss_from_hidden
from lm2vec.training.objectives.simcse import restore_dropout, set_dropout, simcse_loss

PAD, BOS, EOS, MASK = 0, 1, 2, 3


# ---------------------------------------------------------------- mask_tokens


def _batch(padding_side: str, rows: int = 16, length: int = 12, vocab: int = 100, bos: bool = False):
    """Random ids in [4, vocab) with per-row lengths 1..length; optional BOS at the first real token, EOS last."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, vocab, (rows, length), generator=g)
    lengths = torch.randint(1, length + 1, (rows,), generator=g)
    lengths[0] = length  # one full row
    pos = torch.arange(length)
    real = pos < lengths[:, None] if padding_side == "right" else pos >= length - lengths[:, None]
    first = real.int().argmax(1)
    last = length - 1 - real.flip(1).int().argmax(1)
    rows_idx = torch.arange(rows)
    if bos:
        ids[rows_idx, first] = BOS
    ids[rows_idx, last] = EOS
    ids[~real] = PAD
    return ids, real.long(), first


@pytest.mark.parametrize("padding_side", ["left", "right"])
@pytest.mark.parametrize("bos", [False, True])
def test_mask_tokens_never_masks_padding_specials_or_first_real_token(padding_side, bos):
    ids, mask, first = _batch(padding_side, bos=bos)
    _, labels = mask_tokens(ids, mask, MASK, 100, rate=1.0, special_token_ids=(BOS, EOS, PAD))
    maskable = mask.bool() & (ids != BOS) & (ids != EOS)
    maskable[torch.arange(ids.shape[0]), first] = False  # no predecessor under MNTP
    assert torch.equal(labels != -100, maskable)  # rate 1.0: exactly the maskable positions
    assert torch.equal(labels[maskable], ids[maskable])


@pytest.mark.parametrize("strategy", ["80-10-10", "all-mask"])
def test_mask_tokens_changes_only_labelled_positions(strategy):
    ids, mask, _ = _batch("left")
    masked, labels = mask_tokens(ids, mask, MASK, 100, rate=0.5, strategy=strategy, special_token_ids=(EOS,))
    selected = labels != -100
    assert selected.any()
    assert torch.equal(masked[~selected], ids[~selected])
    assert torch.equal(labels[selected], ids[selected])
    if strategy == "all-mask":
        assert (masked[selected] == MASK).all()


def test_mask_tokens_rate_and_80_10_10_proportions():
    g = torch.Generator().manual_seed(0)
    vocab = 1000
    ids = torch.randint(4, vocab, (256, 512), generator=g)
    mask = torch.ones_like(ids)
    masked, labels = mask_tokens(ids, mask, MASK, vocab, rate=0.2, generator=g)
    selected = labels != -100
    assert abs(selected.sum().item() / (256 * 511) - 0.2) < 0.005  # column 0 is never maskable
    is_mask = masked[selected] == MASK
    kept = masked[selected] == ids[selected]
    randomised = ~is_mask & ~kept
    n = selected.sum().item()
    assert abs(is_mask.sum().item() / n - 0.8) < 0.01
    assert abs(kept.sum().item() / n - 0.1) < 0.01
    assert abs(randomised.sum().item() / n - 0.1) < 0.01
    assert masked[selected][randomised].max() < vocab


def test_mask_tokens_is_deterministic_with_a_generator():
    ids, mask, _ = _batch("right")

    def run(seed):
        return mask_tokens(ids, mask, MASK, 100, generator=torch.Generator().manual_seed(seed))

    a, b, c = run(7), run(7), run(8)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])


def test_mask_tokens_rejects_unknown_strategy():
    ids, mask, _ = _batch("right")
    with pytest.raises(ValueError, match="strategy"):
        mask_tokens(ids, mask, MASK, 100, strategy="90-10")


# ---------------------------------------------------------------- MNTP loss


class RecordingHead(nn.Module):
    """lm_head with logits = [h0, h1, 0] that records the shapes it is called on."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(2, 3, bias=False)
        with torch.no_grad():
            self.linear.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]))
        self.shapes = []

    def forward(self, x):
        self.shapes.append(tuple(x.shape))
        return self.linear(x)


# hidden (B=2, T=3, D=2); row 1 has no label at all
HIDDEN = torch.tensor([[[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]], [[5.0, 5.0], [5.0, 5.0], [5.0, 5.0]]])
LABELS = torch.tensor([[-100, 0, 1], [-100, -100, -100]])
# token 0 at position 1 from hidden[0] = (2, 0): logits (2, 0, 0) -> -log softmax[0] = log(e^2 + 2) - 2
# token 1 at position 2 from hidden[1] = (0, 1): logits (0, 1, 0) -> -log softmax[1] = log(2 + e) - 1
EXPECTED = ((math.log(math.e**2 + 2) - 2) + (math.log(2 + math.e) - 1)) / 2
# reading position i instead: hidden[1] -> logits (0,1,0) for token 0; hidden[2] -> (1,1,0) for token 1
WRONG = ((math.log(2 + math.e) - 0) + (math.log(2 * math.e + 1) - 1)) / 2


def test_mntp_loss_from_hidden_matches_hand_computed_value_and_uses_position_i_minus_1():
    head = RecordingHead()
    loss = mntp_loss_from_hidden(HIDDEN, head, LABELS)
    assert loss.dim() == 0
    assert loss.item() == pytest.approx(EXPECTED, abs=1e-6)
    assert abs(EXPECTED - WRONG) > 0.1
    assert head.shapes == [(2, 2)]  # only the two labelled rows reach the head


def test_mntp_loss_from_hidden_softcap():
    labels = torch.tensor([[-100, -100, 1]])  # token 1 from hidden (0, 1): logits tanh((0, 1, 0))
    loss = mntp_loss_from_hidden(HIDDEN[:1], RecordingHead(), labels, softcap=1.0)
    t = math.tanh(1.0)
    assert loss.item() == pytest.approx(math.log(2 + math.exp(t)) - t, abs=1e-6)


def test_mntp_loss_from_hidden_without_labels_is_zero_and_backpropagates():
    head = RecordingHead()
    hidden = HIDDEN.clone().requires_grad_()
    loss = mntp_loss_from_hidden(hidden, head, torch.full((2, 3), -100))
    loss.backward()
    assert loss.item() == 0.0
    assert torch.equal(head.linear.weight.grad, torch.zeros(3, 2))
    assert torch.equal(hidden.grad, torch.zeros_like(hidden))


DECODER = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4}
DECODER |= {"num_key_value_heads": 4, "pad_token_id": 0}
TINY = {  # model_type -> config sizes: 2 layers, hidden 64, 4 heads, vocab 128
    "llama": DECODER,
    "qwen2": DECODER,
    "gemma2": DECODER | {"head_dim": 16, "final_logit_softcapping": 0.5},  # small cap: it matters
    "gpt2": {"n_embd": 64, "n_layer": 2, "n_head": 4, "n_positions": 64},
}


def _tiny(model_type: str):
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(
        model_type, vocab_size=128, bos_token_id=BOS, eos_token_id=EOS, **TINY[model_type]
    )
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).eval()


@pytest.mark.parametrize("model_type", ["llama", "gemma2"])
def test_mntp_loss_matches_causal_lm_logits(model_type):
    """Same backbone: our loss equals shifted cross-entropy on the CausalLM's own logits (softcap included)."""
    model = _tiny(model_type)
    ids, mask, _ = _batch("right", rows=4, length=10, vocab=128)
    _, labels = mask_tokens(ids, mask, MASK, 128, rate=0.5, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits  # (B, T, V)
        expected = nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 128), labels[:, 1:].reshape(-1))
        loss = mntp_loss(model.base_model, model.get_output_embeddings(), ids, mask, labels)
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- InfoNCE

Q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
P = torch.tensor([[3.0, 0.0], [2.0, 2.0]])  # cosines: q1.p1 = 1, q1.p2 = q2.p2 = 1/sqrt2, q2.p1 = 0
N = torch.tensor([[-1.0, 0.0], [0.0, -2.0]])  # cosines: q1.n1 = -1, q2.n2 = -1, others 0
R = 1 / math.sqrt(2)


def _nll(scores, target):
    return -scores[target] + math.log(sum(math.exp(s) for s in scores))


def test_info_nce_in_batch_negatives_hand_computed():
    expected = (_nll([2 * 1, 2 * R], 0) + _nll([2 * 0, 2 * R], 1)) / 2
    assert info_nce(Q, P, scale=2.0).item() == pytest.approx(expected, abs=1e-6)


def test_info_nce_with_hard_negatives_hand_computed():
    expected = (_nll([2, 2 * R, -2, 0], 0) + _nll([0, 2 * R, 0, -2], 1)) / 2
    assert info_nce(Q, P, N, scale=2.0).item() == pytest.approx(expected, abs=1e-6)
    assert info_nce(Q, P, N[:, None], scale=2.0).item() == pytest.approx(expected, abs=1e-6)  # (B, K, D)


def test_excluded_candidates_leave_the_softmax_as_if_absent():
    """Query 1's candidate p2 (a duplicate of what it should find) is excluded: its term loses 2R."""
    exclude = torch.tensor([[False, True, False, False], [False, False, False, False]])
    expected = (_nll([2, -2, 0], 0) + _nll([0, 2 * R, 0, -2], 1)) / 2
    assert info_nce(Q, P, N, scale=2.0, exclude=exclude).item() == pytest.approx(expected, abs=1e-6)


def test_false_negatives_marks_repeats_of_a_querys_target_only():
    # queries 0 and 2 share a text; positive 3 repeats positive 1; negative 0 repeats positive 2
    q, p, n = torch.tensor([7, 8, 7, 9]), torch.tensor([10, 11, 12, 11]), torch.tensor([12, 13])
    mask = false_negatives(q, p, n)
    expected = torch.zeros(4, 6, dtype=torch.bool)
    expected[0, 2] = expected[2, 0] = True  # same query text: the other's positive is a positive too
    expected[1, 3] = expected[3, 1] = True  # same positive text
    expected[2, 4] = True  # hard negative 0 is query 2's own positive text
    assert torch.equal(mask, expected)
    assert torch.equal(false_negatives(q, p, n, first=2, count=2), expected[2:])  # rank 1 of 2


def test_supervised_batch_uses_every_hard_negative_and_keeps_triplets_without_one(tokenizer):
    from conftest import tiny_encoder

    from lm2vec.data.triplets import Triplet
    from lm2vec.training.objectives import SupervisedTask
    from lm2vec.training.recipe import StageConfig

    triplets = [Triplet("q one", "p one", ["n1", "n2"]), Triplet("q two", "p two", []), Triplet("q one", "p3", ["n3"])]
    encoder = tiny_encoder()
    task = SupervisedTask(StageConfig(objective="supervised", data="x"), encoder)
    batch = task.collate(triplets, torch.Generator())
    assert batch["negative"]["input_ids"].shape[0] == 3  # n1, n2, n3
    assert task.stage.scale == 50.0 and task.stage.attention_dropout == 0.0  # llm2vec's supervised defaults
    with torch.no_grad():
        masked = task.loss(batch).item()
        task.stage.mask_duplicates = False
        plain = task.loss(batch).item()
    assert masked != pytest.approx(plain)  # rows 0 and 2 share a query: masking changes the loss


def test_info_nce_from_scores_and_single_process_fallbacks():
    scores = torch.tensor([[1.0, 0.0], [0.5, 2.0]])
    expected = (_nll([1.0, 0.0], 0) + _nll([0.5, 2.0], 1)) / 2
    assert info_nce_from_scores(scores, torch.tensor([0, 1])).item() == pytest.approx(expected, abs=1e-6)
    assert gather_with_grad(Q) is Q
    assert distributed_info_nce(Q, P, N, scale=2.0).item() == info_nce(Q, P, N, scale=2.0).item()


# ---------------------------------------------------------------- dropout and SimCSE


@pytest.mark.parametrize("model_type", ["llama", "qwen2", "gpt2"])
def test_set_dropout_reaches_the_attention_forward(model_type):
    model = _tiny(model_type)
    ids = torch.randint(4, 128, (2, 8), generator=torch.Generator().manual_seed(0))
    original = set_dropout(model, attention=0.0, hidden=0.0)

    def two_forwards(train):
        model.train(train)
        with torch.no_grad():
            return model(input_ids=ids).logits, model(input_ids=ids).logits

    assert torch.equal(*two_forwards(True))  # no dropout left anywhere (gpt2 defaults to 0.1)
    set_dropout(model, attention=0.3)  # attention alone must make the two views differ
    assert not torch.allclose(*two_forwards(True))
    assert torch.equal(*two_forwards(False))
    restore_dropout(model, original)
    assert set_dropout(model, attention=0.0, hidden=0.0) == original


def test_set_dropout_returns_previous_values_and_sets_config():
    model = _tiny("gpt2")
    previous = set_dropout(model, attention=0.3)
    assert previous["config.attn_pdrop"] == 0.1 and model.config.attn_pdrop == 0.3
    assert model.transformer.h[0].attn.attn_dropout.p == 0.3
    assert model.transformer.h[0].attn.resid_dropout.p == 0.1  # hidden untouched
    llama = _tiny("llama")
    set_dropout(llama, attention=0.3)
    assert llama.config.attention_dropout == 0.3
    assert all(layer.self_attn.attention_dropout == 0.3 for layer in llama.model.layers)


def test_simcse_loss_is_info_nce_between_two_calls():
    views = iter([Q, P])
    assert simcse_loss(lambda batch: next(views), None, scale=2.0).item() == info_nce(Q, P, scale=2.0).item()


def test_simcse_loss_on_tiny_llama_backpropagates():
    model = _tiny("llama").train()
    set_dropout(model, attention=0.3)
    ids = torch.randint(4, 128, (4, 8), generator=torch.Generator().manual_seed(0))

    def embed(batch):
        return model.base_model(input_ids=batch).last_hidden_state.mean(1)  # (B, D)

    loss = simcse_loss(embed, ids)
    loss.backward()
    assert loss.item() > 0
    assert model.model.embed_tokens.weight.grad.abs().sum() > 0


def test_simcse_task_embeds_both_views_in_one_pass_with_their_own_dropout():
    """One forward of the batch stacked on itself: the copies of a text differ (each row draws its own
    masks), and the loss is info-NCE between the two halves, as two separate passes would give it."""
    from conftest import byte_tokenizer, tiny_model

    from lm2vec.core.encoder import Encoder, EncoderConfig
    from lm2vec.training.objectives.simcse import SimCSETask
    from lm2vec.training.recipe import StageConfig

    encoder = Encoder(tiny_model("llama"), byte_tokenizer(), EncoderConfig(max_length=32))
    set_dropout(encoder.model, attention=0.3)
    encoder.model.train()
    task = SimCSETask(StageConfig(objective="simcse", data="unused", batch_size=3), encoder)
    batch = task.collate(["a cat", "two dogs sat", "owls"], torch.Generator())
    calls, embed = [], encoder.embed
    encoder.embed = lambda b: calls.append(b) or embed(b)
    torch.manual_seed(0)
    loss = task.loss(batch)
    assert len(calls) == 1 and calls[0]["input_ids"].shape[0] == 6
    assert torch.equal(calls[0]["input_ids"][:3], calls[0]["input_ids"][3:])
    torch.manual_seed(0)
    both = embed(calls[0])
    assert (both[:3] - both[3:]).abs().max() > 1e-3  # dropout, not the input, tells the views apart
    assert loss.item() == pytest.approx(info_nce(both[:3], both[3:], scale=20.0).item(), rel=1e-6)


def _sentencepiece_tokenizer():
    """A Metaspace (SentencePiece-style) tokenizer where "_" is a vocabulary token but tokenizer("_") is "▁" "_"."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "▁": 3, "_": 4, **{c: 5 + i for i, c in enumerate("abcdefgh")}}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


def test_mntp_mask_token_is_the_vocabulary_entry_on_sentencepiece_tokenizers():
    from conftest import tiny_model

    from lm2vec import Encoder, EncoderConfig
    from lm2vec.training.objectives import MNTPTask
    from lm2vec.training.recipe import StageConfig

    tokenizer = _sentencepiece_tokenizer()
    assert tokenizer("_", add_special_tokens=False)["input_ids"] == [3, 4]  # "▁" "_": the old check refused it
    encoder = Encoder(tiny_model("llama"), tokenizer, EncoderConfig())
    task = MNTPTask(StageConfig(objective="mntp", data="x", mask_token="_"), encoder, lm_head=None)
    assert task.mask_id == 4
    # config.vocab_size is 300, the tokenizer has 13 tokens: replacements come from its 10 non-special ones
    assert task.vocab.tolist() == list(range(3, 13))
    with pytest.raises(ValueError, match="not in this tokenizer's vocabulary"):
        MNTPTask(StageConfig(objective="mntp", data="x", mask_token="[MASK]"), encoder, lm_head=None)


def test_random_replacements_come_only_from_the_given_ids():
    ids, mask, _ = _batch("right", rows=64, length=12)
    allowed = torch.tensor([50, 51, 52])
    masked, labels = mask_tokens(ids, mask, MASK, allowed, rate=0.9, generator=torch.Generator().manual_seed(0))
    replaced = (labels != -100) & (masked != MASK) & (masked != ids)
    assert replaced.sum() > 10 and set(masked[replaced].tolist()) <= {50, 51, 52}
