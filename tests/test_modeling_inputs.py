"""modeling_inputs.py: the patch embedding and vector projection against hand computations, where their rows go in
packed and padded layouts, sharing and names, and text batches computing exactly as in a model without them."""
import dataclasses

import pytest
import torch
import torch.nn.functional as F

import checkpoints
import features as feats
import modalities
import modeling
import modeling_inputs
import problems
from conftest import FIXTURES, fixture_glue_dir, minilm_dir
from helpers import assert_std
from methods import METHODS
from modalities import ImageInput, VectorInput
from problems_file import read_problems_file

MULTIMODAL = FIXTURES / "multimodal"
# A 2-layer encoder over the real bert-base-uncased vocabulary (the fixture's captions are tokenised with MiniLM's).
SMALL = dict(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
             hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
MAX_SEQ_LENGTH = 48


@pytest.fixture(scope="module")
def captions(tmp_path_factory):
    """The fixture's problem (captions, 28 x 28 grey PNGs, 1-4 vectors of width 4) and its training features."""
    problem = read_problems_file(MULTIMODAL / "problems.json")["fashion_captions"]
    data = problems.load_problem_features(problem, "train", MULTIMODAL, minilm_dir() / "vocab.txt", True,
                                          MAX_SEQ_LENGTH, cache_dir=tmp_path_factory.mktemp("cache"))
    return problem, data


def small_model(method, problem_list, seed=0, **overrides):
    config = method.modeling.BertConfig(**{**SMALL, "our_attn": method.name != "pals", **overrides})
    config = checkpoints.configure_model(method, config, MAX_SEQ_LENGTH, h_aug=12 if method.name == "pals" else 8)
    torch.manual_seed(seed)
    model, _ = checkpoints.build_model(method, config, problem_list)
    return model.eval()


def forward(model, batch, head=0):
    return model(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"], head,
                 token_index=batch["token_index"], heads=[head], inputs=batch.get("inputs")).logits[0]


def test_patch_embedding_is_the_hand_computation_and_vit_s_conv2d():
    torch.manual_seed(0)
    C, P, D = 3, 4, 5
    module = modeling_inputs.PatchEmbeddings(C, P, D, num_patches=7)
    for parameter in module.parameters():
        torch.nn.init.normal_(parameter)
    pixels = torch.randint(0, 256, (2, C, 8, 12), dtype=torch.uint8)  # 2 x 3 patches
    out = module(pixels)
    assert out.shape == (2, 6, D)
    x = (pixels.double() / 255 - 0.5) / 0.5
    W, b, pos = (t.double() for t in (module.projection.weight, module.projection.bias,
                                      module.position_embeddings.weight))
    for image in range(2):
        for row in range(2):
            for column in range(3):
                patch = x[image, :, row * P:(row + 1) * P, column * P:(column + 1) * P]  # (C, P, P)
                n = row * 3 + column
                expected = W @ patch.flatten() + b + pos[n]
                torch.testing.assert_close(out[image, n].double(), expected, rtol=1e-5, atol=1e-5)
    conv = F.conv2d(x.float(), module.conv_weight(), module.projection.bias, stride=P)  # (B, D, 2, 3)
    torch.testing.assert_close(out, conv.flatten(2).transpose(1, 2) + module.position_embeddings.weight[:6])


def test_vector_projection_is_the_hand_computation():
    torch.manual_seed(1)
    module = modeling_inputs.VectorEmbeddings(width=4, hidden_size=6, max_features=3)
    vectors = torch.randn(2, 3, 4)
    out = module(vectors)
    for i in range(2):
        for v in range(3):
            expected = module.projection.weight @ vectors[i, v] + module.projection.bias + \
                module.position_embeddings.weight[v]
            torch.testing.assert_close(out[i, v], expected)


def test_every_token_gets_its_embedding_and_modality_row(captions):
    """Each row of the summed embeddings, in both layouts: a text token keeps its word + position + segment sum plus
    the text row; a patch is its projected patch plus the image row; a vector its projection plus the features row."""
    problem, data = captions
    model = small_model(METHODS["embert"], [problem])
    inputs_module = model.bert.embeddings.inputs
    indices = torch.tensor([5, 0, 3, 6])
    batch = feats.make_batch(data, indices)
    B, T = batch["input_ids"].shape
    positions = torch.arange(T).expand(B, T)
    words = model.bert.embeddings.word_embeddings(batch["input_ids"]) + \
        model.bert.embeddings.position_embeddings(positions) + \
        model.bert.embeddings.token_type_embeddings(batch["token_type_ids"])  # (B, T, H)
    modality = inputs_module.modality_type_embeddings.weight
    patches_module, vectors_module = inputs_module.images["c1_p7"], inputs_module.vectors["d4"]
    expected = words.clone()
    for row, example in enumerate(indices.tolist()):
        start = int(data.offsets[example])
        kinds = data.modality[start:int(data.offsets[example + 1])].tolist()
        patches = patches_module(data.images[example][None])[0]  # (16, H)
        vectors = vectors_module(data.vectors[example][None])[0]  # (V, H)
        seen = {modalities.IMAGE: 0, modalities.VECTORS: 0}
        for t, kind in enumerate(kinds):
            if kind == modalities.IMAGE:
                expected[row, t] = patches[seen[kind]]
            elif kind == modalities.VECTORS:
                expected[row, t] = vectors[seen[kind]]
            seen[kind] = seen.get(kind, 0) + 1
            expected[row, t] += modality[kind]
        assert seen[modalities.IMAGE] == 16 and seen[modalities.VECTORS] == 1 + example % 4
    real = batch["attention_mask"].bool()
    packed = inputs_module(words[real], batch["inputs"], batch["token_index"], packed=True)
    torch.testing.assert_close(packed, expected[real])
    padded = inputs_module(words, batch["inputs"], batch["token_index"], packed=False)
    torch.testing.assert_close(padded[real], expected[real])


def test_packed_and_padded_layouts_give_the_same_logits(captions):
    problem, data = captions
    model = small_model(METHODS["embert"], [problem])
    batch = feats.make_batch(data, torch.arange(8))
    packed = forward(model, batch)
    model.bert.pack_tokens = False  # as Gated-BERT and --compile's CUDA graphs run
    torch.testing.assert_close(forward(model, batch), packed, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["embert", "gated", "pals"])
def test_images_and_vectors_reach_the_output_of_every_method(captions, name):
    """Patches and vectors are tokens in every layer: changing one image or one vector changes that example's logits
    (and only its own), with EmBERT's task rows, Gated-BERT's gate (padded to max_seq_length) and PALs."""
    problem, data = captions
    method = METHODS[name]
    model = small_model(method, [problem])
    pad_to = MAX_SEQ_LENGTH if method.pad_to_max_length else None
    batch = feats.make_batch(data, torch.arange(4), pad_to=pad_to)
    before = forward(model, batch)
    for key in ("pixel_values", "vectors"):
        changed = {**batch, "inputs": dict(batch["inputs"])}
        changed["inputs"][key] = batch["inputs"][key].clone()
        changed["inputs"][key][1] = 255 - changed["inputs"][key][1] if key == "pixel_values" else \
            changed["inputs"][key][1] + 1
        after = forward(model, changed)
        assert not torch.allclose(after[1], before[1]), key
        torch.testing.assert_close(after[[0, 2, 3]], before[[0, 2, 3]])


def test_modules_are_shared_by_channels_patch_size_and_width_with_documented_names():
    """One patch embedding per (channels, patch size), one projection per width, position tables as long as the
    longest need; BERT's initialisation; nothing for a model of text problems."""
    rte = problems.get_problem("rte")
    grey = dataclasses.replace(rte, name="a", image=ImageInput((28, 28), 7, 1), vectors=VectorInput(4, 3))
    small = dataclasses.replace(rte, name="b", image=ImageInput((14, 56), 7, 1), vectors=VectorInput(4, 9))
    colour = dataclasses.replace(rte, name="c", image=ImageInput((32, 32), 16, 3), vectors=VectorInput(8))
    model = small_model(METHODS["embert"], [rte, grey, small, colour])
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters() if ".inputs." in name}
    prefix = "bert.embeddings.inputs."
    assert shapes == {
        prefix + "modality_type_embeddings.weight": (3, 32),
        prefix + "images.c1_p7.projection.weight": (32, 49), prefix + "images.c1_p7.projection.bias": (32,),
        prefix + "images.c1_p7.position_embeddings.weight": (16, 32),
        prefix + "images.c3_p16.projection.weight": (32, 768), prefix + "images.c3_p16.projection.bias": (32,),
        prefix + "images.c3_p16.position_embeddings.weight": (4, 32),
        prefix + "vectors.d4.projection.weight": (32, 4), prefix + "vectors.d4.projection.bias": (32,),
        prefix + "vectors.d4.position_embeddings.weight": (9, 32),
        prefix + "vectors.d8.projection.weight": (32, 8), prefix + "vectors.d8.projection.bias": (32,),
        prefix + "vectors.d8.position_embeddings.weight": (64, 32),
    }
    for name, parameter in model.named_parameters():
        if ".inputs." in name:
            if name.endswith("bias"):
                assert not parameter.any(), name
            else:
                assert_std(parameter.detach(), name)
    assert not any(".inputs." in name for name, _ in small_model(METHODS["embert"], [rte]).named_parameters())


def test_a_text_problem_computes_exactly_as_without_a_multimodal_problem_beside_it():
    """A model whose second problem reads images against the same model whose second problem has no image: the
    same initial weights (the input embeddings draw after everything else), and on RTE's real batch the same logits,
    loss and gradients, bit for bit; the image modules get no gradient from a text batch."""
    method = METHODS["embert"]
    config = modeling.BertConfig.from_json_file(minilm_dir() / "config.json")
    config = dataclasses.replace(config, our_attn=True)
    state = checkpoints.map_state_dict(checkpoints.read_state_dict(minilm_dir() / "model.safetensors")[0])
    match = problems.get_problem("fashion_match")
    rte = problems.get_problem("rte")
    models = []
    for second in (match, dataclasses.replace(match, image=None)):
        torch.manual_seed(7)
        model, _ = checkpoints.build_model(method, config, [rte, second], state, "MiniLM")
        models.append(model)
    with_image, text_only = models
    assert with_image.bert.embeddings.inputs is not None and text_only.bert.embeddings.inputs is None
    shared = text_only.state_dict()
    own = with_image.state_dict()
    assert set(own) - set(shared) == {k for k in own if ".inputs." in k}
    assert all(torch.equal(own[k], v) for k, v in shared.items())
    data = problems.load_problem_features("rte", "train", fixture_glue_dir(), minilm_dir() / "vocab.txt", True, 128)
    batch = feats.make_batch(data, torch.arange(16))
    outputs = []
    for model in models:
        model.train()
        torch.manual_seed(3)  # the same dropout masks
        output = model(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"], 0, [batch["labels"]],
                       token_index=batch["token_index"], heads=[0])
        output.losses[0].backward()
        outputs.append(output)
    assert torch.equal(outputs[0].logits[0], outputs[1].logits[0])
    assert torch.equal(outputs[0].losses[0], outputs[1].losses[0])
    grads = dict(text_only.named_parameters())
    for name, parameter in with_image.named_parameters():
        if ".inputs." in name:
            assert parameter.grad is None, name
        elif parameter.grad is not None:
            assert torch.equal(parameter.grad, grads[name].grad), name


def test_a_run_s_model_rebuilds_with_its_input_embeddings(captions, tmp_path):
    """build_model with require_all (prediction) needs the input embeddings from the file; they load back exactly."""
    problem, data = captions
    model = small_model(METHODS["embert"], [problem], seed=5)
    state = model.state_dict()
    rebuilt, fresh = checkpoints.build_model(METHODS["embert"], model.config, [problem], state, "run",
                                             require_all=True)
    assert fresh == []
    batch = feats.make_batch(data, torch.arange(6))
    torch.testing.assert_close(forward(rebuilt.eval(), batch), forward(model, batch))
    without = {k: v for k, v in state.items() if ".inputs." not in k}
    with pytest.raises(ValueError, match=r"lacks 7 parameter\(s\): bert\.embeddings\.inputs\.modality_type"):
        checkpoints.build_model(METHODS["embert"], model.config, [problem], without, "run", require_all=True)
