"""The BERT2BERT decoder against transformers' EncoderDecoderModel on the same weights (loss, greedy and beam
search), greedy = beam search with one beam, cached = uncached decoding, and the BERT2BERT warm start."""
import dataclasses

import pytest
import torch

import modeling
import modeling_seq2seq
import problem_types
from conftest import require
from features import IGNORE_INDEX
from helpers import TINY
from modeling_seq2seq import DecoderSettings
from problem_record import Problem, TsvSplit

CLS_ID, SEP_ID, PAD_ID = 2, 3, 0  # of the tiny vocabulary (any ids: the decoder is told them)
DECODER_LAYERS = 3
# Wide random weights, so that next-token scores are far apart and float rounding cannot swap two of them.
WIDE_INIT = 0.3
MAX_TARGET = 9
SOURCES = [7, 12, 5, 9, 3, 11, 6, 10]  # source lengths of the batches generated from


def text_problem(**settings):
    return Problem("titles", "", {"train": TsvSplit("train.tsv", ("a",), "b")}, None, {"dev": ("bleu",)},
                   type="seq2seq_text", decoder=DecoderSettings(decoder_layers=DECODER_LAYERS, **settings))


def tag_problem(symbols=("A", "B", "C", "D", "E")):
    return Problem("g2p", "", {"train": TsvSplit("train.tsv", ("a",), "b")}, symbols, {"dev": ("seq_acc",)},
                   type="seq2seq_tag", decoder=DecoderSettings(decoder_layers=DECODER_LAYERS))


def our_model(problem, **config):
    config = modeling.BertConfig(**{**TINY, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0,
                                    **config})
    return modeling.BertForMultiTask(config, [0], [problem.type], problems=[problem]).eval()


def transformers_pair(problem):
    """A random transformers.EncoderDecoderModel (BERT encoder, BertLMHeadModel decoder) and ours with its weights."""
    try:
        import transformers
    except ImportError:
        require(False, "needs transformers (pip install -r requirements-dev.txt)")
    torch.manual_seed(0)
    common = dict(TINY, hidden_act="gelu", initializer_range=WIDE_INIT, hidden_dropout_prob=0.0,
                  attention_probs_dropout_prob=0.0)
    own = problem.type == "seq2seq_tag"
    decoder_vocab = 3 + len(problem.labels) if own else TINY["vocab_size"]
    encoder = transformers.BertModel(transformers.BertConfig(**common))
    decoder = transformers.BertLMHeadModel(transformers.BertConfig(
        **{**common, "vocab_size": decoder_vocab, "num_hidden_layers": DECODER_LAYERS}, is_decoder=True,
        add_cross_attention=True))
    hf = transformers.EncoderDecoderModel(encoder=encoder, decoder=decoder).eval()
    hf.config.decoder_start_token_id = 1 if own else CLS_ID
    hf.config.pad_token_id = PAD_ID
    with torch.no_grad():
        if not own:  # seq2seq_text reads and writes the encoder's word embeddings
            hf.decoder.bert.embeddings.word_embeddings.weight.copy_(hf.encoder.embeddings.word_embeddings.weight)
    ours = our_model(problem)
    state = modeling_seq2seq.encoder_decoder_state(hf.state_dict(), 0)
    if not own:
        state.pop("classifier.0.embeddings.word_embeddings.weight")
    ours.load_state_dict(state, strict=True)  # every parameter of ours, and nothing else
    with torch.no_grad():  # tied: the output layer's bias is the decoder's
        hf.decoder.cls.predictions.bias[end_id(problem)] += end_bias(ours, problem)
    ours.load_state_dict(modeling_seq2seq.encoder_decoder_state(hf.state_dict(), 0), strict=False)
    return hf, ours


def end_bias(model, problem):
    """What to add to the end token's output bias so that a random decoder ends about half of SOURCES at the first
    step (the median gap between its best other token and the end token): rows then end at varied lengths."""
    ids, types, mask = source_batch(SOURCES)
    head = model.classifier[0]
    with torch.no_grad():
        memory = memory_of(model, ids, types, mask)
        logits = head.logits(memory, head.hidden_states(memory, torch.full((len(SOURCES), 1), start_id(problem))))
    end = end_id(problem)
    others = torch.cat([logits[:, 0, :end], logits[:, 0, end + 1:]], dim=-1)
    gaps = (others.max(-1).values - logits[:, 0, end]).sort().values
    return float(gaps[len(gaps) // 2 - 1] + gaps[len(gaps) // 2]) / 2  # between two rows' gaps: no exact tie


def end_id(problem):
    return 2 if problem.type == "seq2seq_tag" else SEP_ID


def start_id(problem):
    return 1 if problem.type == "seq2seq_tag" else CLS_ID


def source_batch(lengths, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.zeros(len(lengths), max(lengths), dtype=torch.int64)
    mask = torch.zeros_like(ids)
    for row, n in enumerate(lengths):
        ids[row, :n] = torch.randint(5, TINY["vocab_size"], (n,), generator=g)
        ids[row, 0], ids[row, n - 1] = CLS_ID, SEP_ID
        mask[row, :n] = 1
    return ids, torch.zeros_like(ids), mask


def target_labels(problem, lengths, vocab, seed=2):
    """Ours: [start, target..., end] padded with IGNORE_INDEX; transformers': the same without the start."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.full((len(lengths), max(lengths) + 2), IGNORE_INDEX)
    for row, n in enumerate(lengths):
        labels[row, :n + 2] = torch.tensor([start_id(problem), *torch.randint(5, vocab, (n,), generator=g).tolist(),
                                            end_id(problem)])
    return labels, labels[:, 1:].contiguous()


def memory_of(model, ids, types, mask):
    with torch.no_grad():
        return model(ids, types, mask, 0).logits[0]


def cut_at_end(rows, end):
    return [row[:row.index(end)] if end in row else row for row in rows]


@pytest.mark.parametrize("problem", [text_problem(), tag_problem()], ids=["text", "tag"])
def test_loss_equals_encoder_decoder_models(problem):
    hf, ours = transformers_pair(problem)
    ids, types, mask = source_batch([7, 12, 5, 9])
    vocab = TINY["vocab_size"] if problem.type == "seq2seq_text" else 8
    labels, hf_labels = target_labels(problem, [3, 6, 1, 4], vocab)
    with torch.no_grad():
        expected = hf(input_ids=ids, attention_mask=mask, labels=hf_labels).loss
        loss = ours(ids, types, mask, 0, [labels]).losses[0]
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("problem", [text_problem(), tag_problem()], ids=["text", "tag"])
@pytest.mark.parametrize("num_beams,length_penalty", [(1, 1.0), (4, 1.0), (3, 0.5), (4, 2.0)])
def test_generation_equals_encoder_decoder_models_generate(problem, num_beams, length_penalty):
    hf, ours = transformers_pair(problem)
    ids, types, mask = source_batch(SOURCES)
    with torch.no_grad():
        expected = hf.generate(input_ids=ids, attention_mask=mask, decoder_start_token_id=start_id(problem),
                               eos_token_id=end_id(problem), pad_token_id=PAD_ID, max_new_tokens=MAX_TARGET,
                               num_beams=num_beams, length_penalty=length_penalty, early_stopping=False,
                               do_sample=False)
        generated = modeling_seq2seq.generate(ours.classifier[0], memory_of(ours, ids, types, mask), start_id(problem),
                                              end_id(problem), PAD_ID, MAX_TARGET, num_beams, length_penalty)
    expected = cut_at_end(expected[:, 1:].tolist(), end_id(problem))
    assert cut_at_end(generated.tolist(), end_id(problem)) == expected
    ended = [len(row) < MAX_TARGET for row in expected]
    assert any(ended) and not all(ended), "the test needs rows that end early and rows cut at the limit"


def random_decoding_model(problem):
    torch.manual_seed(3)
    model = our_model(problem, initializer_range=WIDE_INIT)
    with torch.no_grad():
        model.classifier[0].predictions.bias[end_id(problem)] += end_bias(model, problem)
    return model


@pytest.mark.parametrize("problem", [text_problem(), tag_problem()], ids=["text", "tag"])
def test_greedy_is_beam_search_with_one_beam(problem):
    model = random_decoding_model(problem)
    ids, types, mask = source_batch([3 + (7 * i) % 13 for i in range(24)], seed=4)
    memory = memory_of(model, ids, types, mask)
    args = (model.classifier[0], memory, start_id(problem), end_id(problem), PAD_ID, MAX_TARGET)
    with torch.no_grad():
        greedy = modeling_seq2seq.greedy_search(*args)
        beam = modeling_seq2seq.beam_search(*args, num_beams=1)
    assert cut_at_end(greedy.tolist(), end_id(problem)) == cut_at_end(beam.tolist(), end_id(problem))


@pytest.mark.parametrize("problem", [text_problem(), tag_problem()], ids=["text", "tag"])
@pytest.mark.parametrize("num_beams", [1, 4])
def test_cached_decoding_equals_decoding_without_cache(problem, num_beams):
    model = random_decoding_model(problem)
    ids, types, mask = source_batch([3 + (5 * i) % 11 for i in range(10)], seed=5)
    memory = memory_of(model, ids, types, mask)
    args = (model.classifier[0], memory, start_id(problem), end_id(problem), PAD_ID, MAX_TARGET, num_beams)
    with torch.no_grad():
        cached = modeling_seq2seq.generate(*args, use_cache=True)
        uncached = modeling_seq2seq.generate(*args, use_cache=False)
    assert torch.equal(cached, uncached)


def test_cache_holds_the_prefix_keys_and_values():
    """One step at a time with the cache gives the teacher-forced logits at every position."""
    problem = text_problem()
    model = random_decoding_model(problem)
    ids, types, mask = source_batch([6, 9, 4])
    memory = memory_of(model, ids, types, mask)
    head = model.classifier[0]
    prefix = torch.randint(5, TINY["vocab_size"], (3, 7), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        forced = head.logits(memory, head.hidden_states(memory, prefix))  # (3, 7, V)
        cache = modeling_seq2seq.DecoderCache.start(head, memory, 1, prefix.shape[1])
        stepped = torch.stack([head.step(memory, prefix[:, t], cache) for t in range(prefix.shape[1])], dim=1)
    torch.testing.assert_close(stepped, forced, atol=1e-5, rtol=0)
    assert cache.length == prefix.shape[1]


def test_encoder_warm_start_copies_the_top_layers_and_leaves_cross_attention_fresh():
    problem = text_problem(decoder_init="encoder")
    torch.manual_seed(7)
    model = our_model(problem, num_hidden_layers=4)
    head = model.classifier[0]
    fresh = {name: value.clone() for name, value in head.state_dict().items()}
    kind = problem_types.of(problem)
    kind.initialize_head(problem, model, 0)
    for d, e in zip(range(DECODER_LAYERS), range(1, 4)):  # decoder layer d <- encoder layer e (the top three)
        encoder_layer = model.bert.encoder.layer[e].state_dict()
        for name, value in head.layer[d].state_dict().items():
            if name.startswith("crossattention."):
                assert torch.equal(value, fresh[f"layer.{d}.{name}"]), name
            else:
                assert torch.equal(value, encoder_layer[name]), name
    assert torch.equal(head.embeddings.position_embeddings.weight, model.bert.embeddings.position_embeddings.weight)
    with pytest.raises(ValueError, match="decoder_layers 3 is more than the encoder's 2 layers"):
        kind.initialize_head(problem, our_model(problem), 0)


def test_decoder_parameters_live_under_the_problems_head():
    model = our_model(tag_problem())
    names = [name for name, _ in model.named_parameters() if not name.startswith("bert.")]
    assert names and all(name.startswith("classifier.0.") for name in names)
    assert model.classifier[0].embeddings.word_embeddings.weight.shape == (3 + 5, TINY["hidden_size"])
    text = our_model(text_problem())
    assert not hasattr(text.classifier[0].embeddings, "word_embeddings")  # the encoder's, tied
    assert dataclasses.asdict(text_problem().decoder)["decoder_layers"] == DECODER_LAYERS
